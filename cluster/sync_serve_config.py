"""Copy cluster/serve.yaml into cluster/rayservice.yaml's serveConfigV2 block, text unchanged.

    python cluster/sync_serve_config.py           # rewrite rayservice.yaml
    python cluster/sync_serve_config.py --check   # exit 1 if they differ (what the test checks)

The block sits between the `# serveConfigV2 BEGIN` and `# serveConfigV2 END` comment lines;
everything else in rayservice.yaml is kept as written.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLOCK = re.compile(r"(?P<head>^(?P<ind>[ \t]*)# serveConfigV2 BEGIN[^\n]*\n)(?P<body>.*?)(?P<tail>^[ \t]*# serveConfigV2 END)",
                   re.M | re.S)


def render(serve_text: str, indent: str) -> str:
    body = "".join(f"{indent}  {line}" if line.strip() else "\n" for line in serve_text.splitlines(keepends=True))
    if not body.endswith("\n"):
        body += "\n"
    return f"{indent}serveConfigV2: |\n{body}"


def synced(rayservice_text: str, serve_text: str) -> str:
    m = BLOCK.search(rayservice_text)
    if not m:
        raise SystemExit("rayservice.yaml has no '# serveConfigV2 BEGIN' ... '# serveConfigV2 END' block")
    return rayservice_text[:m.start("body")] + render(serve_text, m.group("ind")) + rayservice_text[m.start("tail"):]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check; exit 1 when rayservice.yaml is stale")
    ap.add_argument("--serve", default=str(HERE / "serve.yaml"))
    ap.add_argument("--rayservice", default=str(HERE / "rayservice.yaml"))
    a = ap.parse_args(argv)
    serve, rs = Path(a.serve), Path(a.rayservice)
    if not serve.is_file():
        print(f"{serve} does not exist yet", file=sys.stderr)
        return 2
    old = rs.read_text()
    new = synced(old, serve.read_text())
    if a.check:
        if new != old:
            print(f"{rs} serveConfigV2 differs from {serve}; run python cluster/sync_serve_config.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        rs.write_text(new)
        print(f"updated {rs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
