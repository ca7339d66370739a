// Annotated sample for release-graph's semgrep rules (`ruleid:` marks the next line as a finding).
const cp = require('child_process');

function handle(req, el) {
  // ruleid: rg-js-eval
  eval(req.body.code);
  // ok: rg-js-eval
  eval("2 + 2");
  // ruleid: rg-js-new-function
  const f = new Function("a", req.query.body);
  // ruleid: rg-js-child-process-exec
  cp.exec("ls " + req.query.dir, () => {});
  // ok: rg-js-child-process-exec
  cp.execFile("ls", [req.query.dir], () => {});
  // ok: rg-js-child-process-exec
  cp.exec("uptime", () => {});
  // ruleid: rg-js-inner-html
  el.innerHTML = "<b>" + req.query.name + "</b>";
  // ok: rg-js-inner-html
  el.innerHTML = "<b>static</b>";
  return f;
}

// ruleid: rg-js-hardcoded-secret
const apiKey = "sk_live_0123456789";
// ok: rg-js-hardcoded-secret
const apiKeyName = "X-Api-Key";
// ruleid: rg-js-hardcoded-secret
const config = { password: "correct-horse" };

module.exports = { handle, apiKey, apiKeyName, config };
