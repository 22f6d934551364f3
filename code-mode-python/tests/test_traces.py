"""Traces: with `configure_tracing`, a cell's spans hang under the OpenTelemetry span
current in Python at its exec, and go to the collector over OTLP/HTTP. Run in a process
of its own (a process installs its tracing once), against a collector written here that
keeps what it receives."""

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    '''
    import http.server, json, threading
    import code_mode
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    received = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assert code_mode.configure_tracing(f"http://127.0.0.1:{server.server_port}", protocol="http/json")
    trace.set_tracer_provider(TracerProvider())
    tracer = trace.get_tracer("agent")

    def lookup(key: str) -> str:
        """Looks a key up."""
        return key.upper()

    with tracer.start_as_current_span("agent.step") as step:
        context = step.get_span_context()
        with code_mode.Session([lookup]) as session:
            result = session.exec("text(await tools.lookup({key: 'k'}))")
    code_mode.shutdown_tracing()
    spans = [
        {"name": span["name"], "trace": span["traceId"], "id": span["spanId"], "parent": span.get("parentSpanId", "")}
        for batch in received
        for resource in batch["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
    print(json.dumps({
        "trace": f"{context.trace_id:032x}",
        "step": f"{context.span_id:016x}",
        "text": result.text,
        "spans": spans,
    }))
    '''
)


def test_a_cell_hangs_under_the_python_span(tmp_path):
    script = tmp_path / "traced.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen["text"] == "K"
    spans = {span["name"]: span for span in seen["spans"]}
    assert {"code_mode.python.call", "code_mode.cell", "code_mode.tool_call"} <= set(spans), seen["spans"]
    call = spans["code_mode.python.call"]
    assert call["trace"] == seen["trace"] and call["parent"] == seen["step"], (call, seen)
    cell = spans["code_mode.cell"]
    assert cell["trace"] == seen["trace"] and cell["parent"] == call["id"], (cell, call)
    assert spans["code_mode.tool_call"]["parent"] == cell["id"]
