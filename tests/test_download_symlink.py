"""`download` follows symlinks as `scp` and Ansible's fetch do: /etc/os-release (a symlink to
../usr/lib/os-release on Debian) arrives as the file it points to, not as a dangling link."""

from __future__ import annotations

import os
from pathlib import Path

from reops import download, exec_, run
from reops.lab.fleet import LabInfo


def test_download_of_a_symlink_brings_the_file(lab: LabInfo, tmp_path: Path) -> None:
    remote = "/etc/os-release"
    assert os.path.islink(remote), "the lab's hosts share this machine's /etc"
    hosts = lab.as_hosts()
    one = type(hosts)([hosts["web1"]])
    out = run(download(one, remote, str(tmp_path / "collected")))
    assert out.exit_code == 0, out.results[0].err
    got = tmp_path / "collected" / "web1" / "os-release"
    assert not got.is_symlink()
    assert got.read_text() == Path(remote).read_text()


def test_download_of_a_directory_with_a_symlink_inside(lab: LabInfo, tmp_path: Path) -> None:
    hosts = lab.as_hosts()
    one = type(hosts)([hosts["web1"]])
    made = run(exec_(one, "d=$(mktemp -d) && mkdir $d/tree $d/tree/sub && "
                     "echo payload > $d/tree/sub/real.txt && ln -s sub/real.txt $d/tree/link.txt "
                     "&& echo $d"))
    assert made.exit_code == 0, made.results[0].err
    remote = made.results[0].out.strip()
    try:
        out = run(download(one, f"{remote}/tree", str(tmp_path / "got")))
        assert out.exit_code == 0, out.results[0].err
        link = tmp_path / "got" / "web1" / "tree" / "link.txt"
        assert not link.is_symlink() and link.read_text() == "payload\n"
    finally:
        run(exec_(one, f"rm -rf {remote}"))
