"""Publish a built book the Jupyter Book way: its HTML committed onto the ``gh-pages`` branch by ghp-import.

Usage (``make publish PROFILE=smoke`` builds the profile first)::

    python -m mmlib.publish --profile smoke            # _build/smoke/_build/html -> gh-pages

The branch holds the site alone, with a ``.nojekyll`` so GitHub Pages serves the ``_static`` folder as it is.
It is pushed when the repository has the remote (``origin``); otherwise it stays a local branch, and the
command says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import paths

#: The branch GitHub Pages serves a project site from.
PAGES_BRANCH = "gh-pages"


class PublishError(RuntimeError):
    """ghp-import or git failed, or the published branch lacks the site."""


@dataclass
class Published:
    """What :func:`publish` did: the branch, its new commit, and the remote it was pushed to (or None)."""

    branch: str
    commit: str
    pushed_to: str | None


def html_dir(profile: str, root: Path = paths.ROOT) -> Path:
    """Where ``python -m mmlib.build --profile PROFILE`` writes the site."""
    return Path(root) / "_build" / profile / "_build" / "html"


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def _ghp_import() -> str:
    beside = Path(sys.executable).parent / "ghp-import"
    found = str(beside) if beside.is_file() else shutil.which("ghp-import")
    if found is None:
        raise FileNotFoundError("ghp-import not found: install mmlib with its 'book' extra")
    return found


def publish(
    site: Path,
    *,
    repo: Path = paths.ROOT,
    branch: str = PAGES_BRANCH,
    remote: str = "origin",
    message: str | None = None,
    profile: str | None = None,
    log: Callable[[str], None] = print,
) -> Published:
    """Commit a built site onto ``branch`` of ``repo`` (``ghp-import -n``), and push it when ``remote`` exists.

    Args:
        site: the HTML folder (holding ``index.html``).
        repo: the git repository that gets the branch (the working tree is not touched).
        branch: the branch to replace with the site.
        remote: pushed to when the repository has a remote of this name (``ghp-import -p``).
        message: the commit message; default names the profile and the source commit.
        profile: the run profile the site was built with (for the default message).
        log: where the outcome is said.

    Returns:
        a :class:`Published`.

    Raises:
        FileNotFoundError: ``site`` has no ``index.html``.
        PublishError: ``repo`` is not a git repository, ghp-import failed, or the branch lacks the site.
    """
    site, repo = Path(site).resolve(), Path(repo).resolve()
    if not (site / "index.html").is_file():
        raise FileNotFoundError(f"site {site}: no index.html (build the book first: make book PROFILE=...)")
    if _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise PublishError(f"repo {repo}: not a git repository")
    source = _git(repo, "rev-parse", "--short", "HEAD").stdout.strip() or "no commit"
    message = message or f"Publish the {profile + ' ' if profile else ''}book built from {source}"
    push = remote in _git(repo, "remote").stdout.split()
    env = dict(os.environ)
    # ghp-import commits as the configured user; a CI checkout may have none, and git refuses an empty name
    if not _git(repo, "config", "user.name").stdout.strip():
        env.setdefault("GIT_COMMITTER_NAME", "mmlib publish")
        env.setdefault("GIT_COMMITTER_EMAIL", "mmlib@localhost")
    cmd = [_ghp_import(), "-n", "-b", branch, "-m", message, *(["-p", "-r", remote] if push else []), str(site)]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    # ghp-import exits 0 when git fast-import fails; the branch's tree is the proof
    tree = _git(repo, "ls-tree", "--name-only", branch)
    names = set(tree.stdout.split()) if tree.returncode == 0 else set()
    if proc.returncode != 0 or not {"index.html", ".nojekyll"} <= names:
        raise PublishError(f"ghp-import {site} onto {branch} in {repo} failed (exit {proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}".strip())
    commit = _git(repo, "rev-parse", branch).stdout.strip()
    if push:
        log(f"[mmlib.publish] {site} -> branch {branch} ({commit[:7]}), pushed to {remote}")
    else:
        log(f"[mmlib.publish] {site} -> local branch {branch} ({commit[:7]}); no remote {remote!r} is configured, "
            f"so nothing was pushed (add one, then: git push {remote} {branch})")
    return Published(branch=branch, commit=commit, pushed_to=remote if push else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mmlib.publish",
                                     description="Publish a built book onto the gh-pages branch (ghp-import).")
    parser.add_argument("--profile", required=True, help="the built profile: _build/PROFILE/_build/html")
    parser.add_argument("--branch", default=PAGES_BRANCH, help="branch to publish to (default: gh-pages)")
    parser.add_argument("--remote", default="origin", help="remote to push to, when configured (default: origin)")
    args = parser.parse_args(argv)
    try:
        publish(html_dir(args.profile), branch=args.branch, remote=args.remote, profile=args.profile)
    except (FileNotFoundError, PublishError) as exc:
        print(f"[mmlib.publish] FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
