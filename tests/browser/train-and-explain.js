// Run in the playground page by tests/browser/cdp.mjs (ARGS is prepended by
// tests/suite/playground.rs): train a head from a CSV through the page's form,
// watch its progress, see it listed with its held-out accuracy and confusion
// matrix, then classify a text and read the explanation strip, then evaluate
// the head against another head and a predictions column of a CSV.
const $ = (selector) => document.querySelector(selector);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(what, check, ms = 45000) {
  const started = Date.now();
  for (;;) {
    const value = check();
    if (value) return value;
    if (Date.now() - started > ms) throw new Error(`waited too long for ${what}: ${document.body.innerText.slice(0, 1500)}`);
    await sleep(50);
  }
}

await until("the heads table", () => $("#heads table"));
$("#head-name").value = ARGS.name;
$("#admin-key").value = ARGS.key;
const files = new DataTransfer();
files.items.add(new File([ARGS.csv], "labels.csv", { type: "text/csv" }));
$("#file").files = files.files;
$("#send").click();

const seen = [];
await until("the upload to finish", () => {
  const status = $("#upload-status");
  const text = status.textContent;
  if (text && seen[seen.length - 1] !== text) seen.push(text);
  if (status.className === "error") throw new Error(`the page reported: ${text}`);
  return status.dataset.done === ARGS.name;
});
const row = await until("the head's row", () => $(`tr.head-row[data-head="${ARGS.name}"][data-status="ready"]`));
const image = await until("the confusion matrix", () => {
  const img = $(`img.confusion-matrix[data-head="${ARGS.name}"]`);
  return img && img.complete && img.naturalWidth > 0 && img;
});

$("#text").value = ARGS.text;
$("#go").click();
const strip = await until("the explanation", () => $(`.card.explanation[data-head="${ARGS.name}"]`));
const card = $(`.card.prediction[data-head="${ARGS.name}"]`);

$("#eval-head").value = ARGS.name;
const other = await until("the other head to compare with", () => $(`.eval-other[value="${ARGS.compare}"]`));
other.checked = true;
$("#eval-key").value = ARGS.key;
const labelled = new DataTransfer();
labelled.items.add(new File([ARGS.eval_csv], "labelled.csv", { type: "text/csv" }));
$("#eval-file").files = labelled.files;
$("#eval-send").click();
await until("the evaluation", () => {
  const status = $("#eval-status");
  if (status.className === "error") throw new Error(`the page reported: ${status.textContent}`);
  return status.dataset.done === ARGS.name;
});
const matrices = await until("the comparison's matrices", () => {
  const img = $("img.comparison-matrices");
  return img && img.complete && img.naturalWidth > 0 && img;
});
return {
  systems: [...document.querySelectorAll("tr.system-row")].map((r) => [r.dataset.name, r.querySelector(".accuracy").textContent]),
  comparisons: [...document.querySelectorAll("tr.comparison-row")].map((r) => [r.dataset.a, r.dataset.b, r.querySelector(".p-value").textContent]),
  matrices_width: matrices.naturalWidth,
  statuses: seen,
  row: row.innerText,
  accuracy: row.querySelector(".accuracy").textContent,
  image_width: image.naturalWidth,
  label: card.dataset.label,
  tokens: [...strip.querySelectorAll(".tok")].map((t) => t.textContent),
  pushes: [...strip.querySelectorAll(".tok")].map((t) => Number(t.dataset.push)),
  error: $("#error") ? $("#error").textContent : null,
};
