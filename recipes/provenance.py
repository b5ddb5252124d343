"""Which code a run or a sweep sitting ran: the git commit of the framework, and whether its tree was edited.

A comparison is only a comparison if every trial in it ran the same code, so a sweep records this for each
sitting and refuses to resume under other code (`recipes.sweep`).
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the framework's checkout (recipes/ lives at its top)


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode(errors="replace")


def code_version(root: Path = ROOT) -> str:
    """`<commit>` of a clean checkout, `<commit>+dirty.<hash>` of an edited one (the hash covers the diff of
    tracked files and the content of untracked, not ignored ones: two different edits give two versions), or
    'unknown' outside git (an installed copy)."""
    head = _git(root, "rev-parse", "HEAD")
    if head is None:
        return "unknown"
    h = hashlib.sha256((_git(root, "diff", "HEAD", "--binary") or "").encode())
    untracked = (_git(root, "ls-files", "--others", "--exclude-standard", "-z") or "").split("\0")
    for name in sorted(filter(None, untracked)):
        h.update(name.encode() + b"\0")
        try:
            h.update((root / name).read_bytes())
        except OSError:
            pass
    dirty = any(filter(None, untracked)) or bool(_git(root, "diff", "HEAD", "--stat"))
    return f"{head.strip()}+dirty.{h.hexdigest()[:12]}" if dirty else head.strip()
