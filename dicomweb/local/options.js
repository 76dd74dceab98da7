// The wrappers' own command-line options, taken out of process.argv before the wrapped server reads it.

// The non-negative number after `name` (removing both from process.argv), or `fallback` when absent.
function option(name, fallback) {
  const at = process.argv.indexOf(name);
  if (at < 0) return fallback;
  const value = Number(process.argv[at + 1]);
  process.argv.splice(at, 2);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name} takes a non-negative number`);
  return value;
}

module.exports = { option };
