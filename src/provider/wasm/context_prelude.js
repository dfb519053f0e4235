// stacyvm's driver for JavaScript code contexts, evaluated once when a
// context starts (and so part of every snapshot of it). The host evaluates
// each cell as a global script, stores its completion value or exception in
// a global, and calls __stacyvm_report to turn it into {result, error}.
function __stacyvm_setup(cwd) {
  try {
    if (typeof os !== "undefined" && typeof os.chdir === "function") os.chdir(cwd);
  } catch (e) {}
}

// The most one MIME value of a result may hold, in characters.
const __stacyvm_max_repr = 1 << 20;

function __stacyvm_clip(text) {
  text = String(text);
  return text.length > __stacyvm_max_repr ? text.slice(0, __stacyvm_max_repr) + "..." : text;
}

function __stacyvm_repr(v) {
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "bigint") return v.toString() + "n";
  if (typeof v === "function") return "[Function: " + (v.name || "anonymous") + "]";
  if (typeof v === "symbol") return v.toString();
  if (v === null || typeof v !== "object") return String(v);
  if (v instanceof Error) return String(v);
  if (v instanceof Promise) return "Promise { <pending> }";
  try {
    const json = JSON.stringify(v);
    if (json !== undefined) return json;
  } catch (e) {}
  return String(v);
}

function __stacyvm_report(key) {
  const v = globalThis[key];
  delete globalThis[key];
  if (key === "__stacyvm_exception") {
    let name = "Error", value, traceback = "";
    if (v instanceof Error) {
      name = v.name || "Error";
      value = String(v.message);
      traceback = String(v.stack || "");
    } else {
      name = "Uncaught";
      value = __stacyvm_repr(v);
    }
    return JSON.stringify({
      result: null,
      error: { name: __stacyvm_clip(name), value: __stacyvm_clip(value), traceback: __stacyvm_clip(traceback) },
    });
  }
  if (v === undefined) return JSON.stringify({ result: null, error: null });
  globalThis._ = v;
  const bundle = { "text/plain": __stacyvm_clip(__stacyvm_repr(v)) };
  const offers = [
    ["_repr_html_", "text/html"],
    ["_repr_svg_", "image/svg+xml"],
    ["_repr_png_", "image/png"],
    ["_repr_markdown_", "text/markdown"],
    ["_repr_json_", "application/json"],
  ];
  for (const [method, mime] of offers) {
    try {
      if (v !== null && typeof v === "object" && typeof v[method] === "function") {
        const out = v[method]();
        bundle[mime] = mime === "application/json" ? out : __stacyvm_clip(out);
      }
    } catch (e) {}
  }
  if (!("application/json" in bundle) && v !== null && typeof v === "object" && !(v instanceof Error)) {
    try {
      const json = JSON.stringify(v);
      if (json !== undefined && json.length <= __stacyvm_max_repr) bundle["application/json"] = JSON.parse(json);
    } catch (e) {}
  }
  return JSON.stringify({ result: bundle, error: null });
}
