// hello-node: reads {"args": [...], "kwargs": {...}} on stdin, answers JSON on stdout.
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const { args = [], kwargs = {} } = input ? JSON.parse(input) : {};
  const answer = { hello: kwargs.name ?? "world", args, lang: "node", method: process.env.DPMSF_METHOD ?? null };
  process.stdout.write(JSON.stringify(answer));
});
