//! The bounds of the training options, one table for every door: the
//! `[training]` settings (the defaults of `POST /heads`, so checked at start:
//! a default the API would refuse stops the service instead of failing every
//! upload), `[heads.<name>]` and the options of `POST /heads`. Each check says
//! what the bound is.

pub const MAX_ALPHAS: usize = 20;
pub const MIN_FOLDS: usize = 2;
pub const MAX_FOLDS: usize = 20;
/// At most half of an upload is held out for the test report.
pub const MAX_TEST_FRACTION: f64 = 0.5;

pub fn alphas(alphas: &[f64]) -> Result<(), String> {
    if alphas.is_empty() || alphas.len() > MAX_ALPHAS || alphas.iter().any(|a| !a.is_finite() || *a < 0.0) {
        return Err(format!("alphas must be 1 to {MAX_ALPHAS} finite non-negative numbers, got {alphas:?}"));
    }
    Ok(())
}

/// Alphas spread over a range (`alpha_grid`): 2 to [`MAX_ALPHAS`].
pub fn alpha_grid(n: usize) -> Result<(), String> {
    if !(2..=MAX_ALPHAS).contains(&n) {
        return Err(format!("alpha_grid must be 2 to {MAX_ALPHAS}, got {n}"));
    }
    Ok(())
}

pub fn cv_folds(folds: usize) -> Result<(), String> {
    if !(MIN_FOLDS..=MAX_FOLDS).contains(&folds) {
        return Err(format!("cv_folds must be {MIN_FOLDS} to {MAX_FOLDS}, got {folds}"));
    }
    Ok(())
}

pub fn test_fraction(fraction: f64) -> Result<(), String> {
    if !(fraction > 0.0 && fraction <= MAX_TEST_FRACTION) {
        return Err(format!("test_fraction must be more than 0 and at most {MAX_TEST_FRACTION}, got {fraction}"));
    }
    Ok(())
}
