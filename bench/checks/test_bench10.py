"""The same ten checks as bench10/exercise.toml, written for pytest-testinfra."""


def test_conf_file(host):
    f = host.file("/etc/bench.conf")
    assert f.exists and f.mode == 0o644 and f.user == "root"


def test_conf_content(host):
    assert host.file("/etc/bench.conf").contains("port=8080")


def test_user(host):
    assert host.user("benchuser").shell == "/bin/bash"


def test_group(host):
    assert host.group("benchgrp").exists


def test_package(host):
    assert host.package("python3").is_installed


def test_process(host):
    assert host.process.filter(comm="benchd")


def test_port(host):
    assert host.socket("tcp://0.0.0.0:8080").is_listening


def test_command(host):
    assert host.run("test -d /srv/bench").rc == 0


def test_page(host):
    assert host.file("/srv/bench/index.html").contains("ok")


def test_link(host):
    assert host.file("/usr/local/bin/bench").linked_to == "/etc/bench.conf"
