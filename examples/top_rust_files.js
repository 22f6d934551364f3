// The five longest Rust files of the sample project in examples/sample, by line count.
// Run from the project root: code-mode run examples/top_rust_files.js --tools examples/tools.toml
const files = await tools.find_files({ root: "sample", suffix: ".rs" });
notify(`counting the lines of ${files.length} Rust files`);
const counts = await tools.count_lines({ paths: files });
const top = Object.entries(counts)
  .sort(([, a], [, b]) => b - a)
  .slice(0, 5);
text("The five longest Rust files:");
for (const [path, lines] of top) {
  text(`${String(lines).padStart(6)}  ${path}`);
}
// Hand the first part back now; the script goes on.
yield_control();
const total = Object.values(counts).reduce((sum, lines) => sum + lines, 0);
text(`${total} lines in ${files.length} files`);
