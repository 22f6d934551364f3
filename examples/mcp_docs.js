// The project's Markdown files, through the MCP filesystem server (examples/mcp.toml):
// list the root, read each file, and print its headings and word count.
const [root] = (await tools.mcp__fs__list_allowed_directories()).content[0].text
  .split("\n")
  .filter((line) => line.startsWith("/"));
const listing = (await tools.mcp__fs__list_directory({ path: root })).content[0].text;
const files = listing
  .split("\n")
  .filter((line) => line.startsWith("[FILE] ") && line.endsWith(".md"))
  .map((line) => line.slice("[FILE] ".length))
  .sort();
notify(`reading ${files.length} Markdown files`);
for (const name of files) {
  const body = (await tools.mcp__fs__read_text_file({ path: `${root}/${name}` })).content[0].text;
  const headings = body.split("\n").filter((line) => /^#{1,2} /.test(line));
  const words = await tools.word_count({ text: body });
  console.log(`${name}: ${words} words, ${headings.length} top headings`);
  for (const heading of headings.slice(0, 3)) console.log(`  ${heading}`);
}
