// The opt-in built-in tools: code-mode run examples/builtins.js --builtin fs,shell
const entries = await tools.list_dir({ path: "." });
const directories = entries.filter((entry) => entry.type === "dir").map((entry) => entry.name);
text(`directories here: ${directories.join(", ")}`);
const readme = await tools.read_file({ path: "README.md", limit: 1 });
text(`README starts with: ${readme}`);
const { exit_code, stdout } = await tools.exec_command({ command: "uname -s" });
text(`uname -s exited with ${exit_code}: ${stdout.trim()}`);
