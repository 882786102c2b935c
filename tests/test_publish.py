"""Publishing a built site onto gh-pages with ghp-import: a local branch without a remote, pushed with one."""

from __future__ import annotations

import subprocess

import pytest

from mmlib import publish


def _git(repo, *args):
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "Test")
    _git(repo, "config", "user.email", "test@example.org")
    (repo / "README.md").write_text("source\n")
    _git(repo, "add", "README.md")
    _git(repo, "commit", "-q", "-m", "source")
    return repo


@pytest.fixture
def site(tmp_path):
    site = tmp_path / "html"
    (site / "_static").mkdir(parents=True)
    (site / "index.html").write_text("<html><body>book</body></html>")
    (site / "_static" / "mmlib.css").write_text("table { padding: 0 }")
    return site


def test_publish_without_a_remote_leaves_a_local_branch_and_says_so(repo, site):
    said = []
    out = publish.publish(site, repo=repo, profile="smoke", log=said.append)
    assert out.branch == "gh-pages" and out.pushed_to is None
    assert set(_git(repo, "ls-tree", "-r", "--name-only", "gh-pages").split()) == {
        "index.html", ".nojekyll", "_static/mmlib.css"}
    assert "nothing was pushed" in said[0] and "local branch gh-pages" in said[0]
    assert "smoke" in _git(repo, "log", "-1", "--format=%s", "gh-pages")
    # the source branch and the working tree are untouched
    assert _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert _git(repo, "status", "--porcelain") == ""
    # publishing again adds a commit on top
    (site / "index.html").write_text("<html><body>book, second build</body></html>")
    publish.publish(site, repo=repo, log=said.append)
    assert _git(repo, "rev-list", "--count", "gh-pages").strip() == "2"
    assert "second build" in _git(repo, "show", "gh-pages:index.html")


def test_publish_pushes_when_the_remote_exists(repo, site, tmp_path):
    remote = tmp_path / "remote.git"
    _git(tmp_path, "init", "-q", "--bare", str(remote))
    _git(repo, "remote", "add", "origin", str(remote))
    said = []
    out = publish.publish(site, repo=repo, log=said.append)
    assert out.pushed_to == "origin" and "pushed to origin" in said[0]
    assert _git(remote, "rev-parse", "gh-pages").strip() == out.commit
    assert {"index.html", ".nojekyll"} <= set(_git(remote, "ls-tree", "--name-only", "gh-pages").split())


def test_publish_refuses_a_missing_site_or_repository(tmp_path, site):
    with pytest.raises(FileNotFoundError, match="no index.html"):
        publish.publish(tmp_path / "nothing", repo=tmp_path)
    (tmp_path / "plain").mkdir()
    with pytest.raises(publish.PublishError, match="not a git repository"):
        publish.publish(site, repo=tmp_path / "plain")
    assert publish.main(["--profile", "no_such_profile_xyz"]) == 1
