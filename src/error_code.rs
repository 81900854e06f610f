//! Every error code the service answers with, once: its string (the API's
//! `error.code`), its HTTP status, its type and status in TEI's error form,
//! and whether it carries `Retry-After`. `http::error::ApiError` carries one;
//! the docs' error tables are checked against [`ErrorCode::ALL`].

use axum::http::StatusCode;

/// How TEI's error form (`{"error", "error_type"}`) reports a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeiKind {
    /// `Overloaded`, 429.
    Overloaded,
    /// `Unhealthy`, 503.
    Unhealthy,
    /// `Validation`, 413: over a limit.
    TooLarge,
    /// `Tokenizer`, 422.
    Tokenizer,
    /// `Empty`, 400.
    Empty,
    /// `Backend`, 424: the model call failed.
    Backend,
    /// `Backend` with our own status (500, 504).
    BackendOwnStatus,
    /// `Validation` with our own status.
    Validation,
}

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $variant:ident = $code:literal, $status:ident, $tei:ident;)*) => {
        /// An error code: see the module's documentation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of this table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as the API writes it (`error.code`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status of our own error form.
            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }

            pub fn tei_kind(self) -> TeiKind {
                match self {
                    $(ErrorCode::$variant => TeiKind::$tei,)*
                }
            }
        }
    };
}

error_codes! {
    AdminDisabled = "admin_disabled", FORBIDDEN, Validation;
    BodyTimeout = "body_timeout", REQUEST_TIMEOUT, Validation;
    DeadlineExceeded = "deadline_exceeded", GATEWAY_TIMEOUT, BackendOwnStatus;
    DefaultHead = "default_head", CONFLICT, Validation;
    DocsUnavailable = "docs_unavailable", SERVICE_UNAVAILABLE, Validation;
    EmptyInput = "empty_input", UNPROCESSABLE_ENTITY, Empty;
    EmptyText = "empty_text", UNPROCESSABLE_ENTITY, Validation;
    EncoderMismatch = "encoder_mismatch", CONFLICT, Validation;
    HeadExists = "head_exists", CONFLICT, Validation;
    HeadFailed = "head_failed", SERVICE_UNAVAILABLE, Unhealthy;
    HeadInSettings = "head_in_settings", CONFLICT, Validation;
    HeadsFolderUnavailable = "heads_folder_unavailable", SERVICE_UNAVAILABLE, Validation;
    HistoryMismatch = "history_mismatch", CONFLICT, Validation;
    InferenceFailed = "inference_failed", INTERNAL_SERVER_ERROR, Backend;
    InputTooLong = "input_too_long", UNPROCESSABLE_ENTITY, TooLarge;
    Internal = "internal", INTERNAL_SERVER_ERROR, BackendOwnStatus;
    InvalidDimensions = "invalid_dimensions", UNPROCESSABLE_ENTITY, Validation;
    InvalidHeadFile = "invalid_head_file", UNPROCESSABLE_ENTITY, Validation;
    InvalidHeadName = "invalid_head_name", UNPROCESSABLE_ENTITY, Validation;
    InvalidInput = "invalid_input", UNPROCESSABLE_ENTITY, Tokenizer;
    InvalidJson = "invalid_json", BAD_REQUEST, Validation;
    InvalidLabel = "invalid_label", UNPROCESSABLE_ENTITY, Validation;
    InvalidLayers = "invalid_layers", UNPROCESSABLE_ENTITY, Validation;
    InvalidOption = "invalid_option", UNPROCESSABLE_ENTITY, Validation;
    InvalidPair = "invalid_pair", UNPROCESSABLE_ENTITY, Validation;
    InvalidRequest = "invalid_request", UNPROCESSABLE_ENTITY, Validation;
    InvalidSplit = "invalid_split", UNPROCESSABLE_ENTITY, Validation;
    LabelsDiffer = "labels_differ", UNPROCESSABLE_ENTITY, Validation;
    MethodNotAllowed = "method_not_allowed", METHOD_NOT_ALLOWED, Validation;
    NoPreviousVersion = "no_previous_version", CONFLICT, Validation;
    NotAcceptable = "not_acceptable", NOT_ACCEPTABLE, Validation;
    NotFound = "not_found", NOT_FOUND, Validation;
    NotReady = "not_ready", SERVICE_UNAVAILABLE, Unhealthy;
    NotStored = "not_stored", CONFLICT, Validation;
    Overloaded = "overloaded", SERVICE_UNAVAILABLE, Overloaded;
    PayloadTooLarge = "payload_too_large", PAYLOAD_TOO_LARGE, TooLarge;
    RequestTooCostly = "request_too_costly", PAYLOAD_TOO_LARGE, TooLarge;
    ResponseTooLarge = "response_too_large", PAYLOAD_TOO_LARGE, TooLarge;
    ShuttingDown = "shutting_down", SERVICE_UNAVAILABLE, Unhealthy;
    TextTooLong = "text_too_long", UNPROCESSABLE_ENTITY, Validation;
    TooFewExamples = "too_few_examples", UNPROCESSABLE_ENTITY, Validation;
    TooFewLabels = "too_few_labels", UNPROCESSABLE_ENTITY, Validation;
    TooManyExamples = "too_many_examples", PAYLOAD_TOO_LARGE, Validation;
    TooManyInputs = "too_many_inputs", PAYLOAD_TOO_LARGE, TooLarge;
    TooManyLabels = "too_many_labels", PAYLOAD_TOO_LARGE, Validation;
    TooManyTokens = "too_many_tokens", PAYLOAD_TOO_LARGE, TooLarge;
    TooMuchWork = "too_much_work", PAYLOAD_TOO_LARGE, TooLarge;
    TrainingInProgress = "training_in_progress", CONFLICT, Validation;
    TrainingQueueFull = "training_queue_full", TOO_MANY_REQUESTS, Validation;
    Unauthorized = "unauthorized", UNAUTHORIZED, Validation;
    UnknownLabel = "unknown_label", UNPROCESSABLE_ENTITY, Validation;
    Unsupported = "unsupported", UNPROCESSABLE_ENTITY, Validation;
    UnsupportedMediaType = "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, Validation;
    VersionDamaged = "version_damaged", CONFLICT, Validation;
    WorkerPanicked = "worker_panicked", INTERNAL_SERVER_ERROR, Backend;
}

impl ErrorCode {
    /// `Retry-After` in seconds: refusals a client should retry (a full queue,
    /// a draining or starting service, the training queue). The default: an
    /// error that knows better gives its own (`ApiError::retry_after`; an
    /// overloaded queue, its estimated work).
    pub fn retry_after_seconds(self) -> Option<u32> {
        matches!(self.status(), StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS).then_some(1)
    }

    /// TEI's error type and status for this code.
    pub fn tei(self) -> (&'static str, StatusCode) {
        match self.tei_kind() {
            TeiKind::Overloaded => ("Overloaded", StatusCode::TOO_MANY_REQUESTS),
            TeiKind::Unhealthy => ("Unhealthy", StatusCode::SERVICE_UNAVAILABLE),
            TeiKind::TooLarge => ("Validation", StatusCode::PAYLOAD_TOO_LARGE),
            TeiKind::Tokenizer => ("Tokenizer", StatusCode::UNPROCESSABLE_ENTITY),
            TeiKind::Empty => ("Empty", StatusCode::BAD_REQUEST),
            TeiKind::Backend => ("Backend", StatusCode::FAILED_DEPENDENCY),
            TeiKind::BackendOwnStatus => ("Backend", self.status()),
            TeiKind::Validation => ("Validation", self.status()),
        }
    }

    /// The code named `text`, if it is one.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| c.as_str() == text)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(text.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{text}");
            assert_eq!(ErrorCode::parse(text), Some(code));
            assert!(code.status().is_client_error() || code.status().is_server_error(), "{text}");
        }
    }

    #[test]
    fn tei_keeps_its_statuses_for_its_types() {
        assert_eq!(ErrorCode::Overloaded.tei(), ("Overloaded", StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(ErrorCode::NotReady.tei(), ("Unhealthy", StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(ErrorCode::InputTooLong.tei(), ("Validation", StatusCode::PAYLOAD_TOO_LARGE));
        assert_eq!(ErrorCode::EmptyInput.tei(), ("Empty", StatusCode::BAD_REQUEST));
        assert_eq!(ErrorCode::WorkerPanicked.tei(), ("Backend", StatusCode::FAILED_DEPENDENCY));
        assert_eq!(ErrorCode::Internal.tei(), ("Backend", StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(ErrorCode::InvalidJson.tei(), ("Validation", StatusCode::BAD_REQUEST));
        assert_eq!(ErrorCode::Overloaded.retry_after_seconds(), Some(1));
        assert_eq!(ErrorCode::InvalidJson.retry_after_seconds(), None);
    }
}
