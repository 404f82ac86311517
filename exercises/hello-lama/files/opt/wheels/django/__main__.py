import argparse
import http.server


def main():
    p = argparse.ArgumentParser(prog="python -m django")
    p.add_argument("command", choices=["runserver"])
    p.add_argument("addr", nargs="?", default="127.0.0.1:8000")
    p.add_argument("--text", default="It worked!")
    a = p.parse_args()
    host, _, port = a.addr.rpartition(":")
    body = a.text.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler).serve_forever()


main()
