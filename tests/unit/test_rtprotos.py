"""iproute2's rt_protos names, read once (``support.rtprotos``) for the daemon's config,
the command-line tools and the route table's conflict messages."""

from __future__ import annotations

from pathlib import Path

from xcluster_cni_lib.support.rtprotos import protocol_name, read_rt_protos


def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_files_then_conf_dirs_in_name_order_first_name_wins(tmp_path: Path) -> None:
    main = write(tmp_path / "etc" / "rt_protos", "# comment\n186 bgp\n0x0c bird # hex\nbad line\n")
    dist = write(tmp_path / "usr" / "rt_protos", "186 not-this\n17 from-usr\n")
    etc_d = tmp_path / "etc" / "rt_protos.d"
    write(etc_d / "b.conf", "202 xcluster\n203 second\n")
    write(etc_d / "a.conf", "203 first\n")
    write(etc_d / "ignored.txt", "204 not-a-conf\n")
    usr_d = tmp_path / "usr" / "rt_protos.d"
    write(usr_d / "z.conf", "202 later\n205 vendor\n")
    names = read_rt_protos([main, dist, str(tmp_path / "missing")], [str(etc_d), str(usr_d)])
    assert names == {
        186: "bgp",
        12: "bird",
        17: "from-usr",
        203: "first",
        202: "xcluster",
        205: "vendor",
    }


def test_protocol_name_uses_rt_protos_d_then_the_kernels_names(tmp_path: Path) -> None:
    d = tmp_path / "rt_protos.d"
    write(d / "x.conf", "202 xcluster\n")
    names = read_rt_protos([], [str(d)])
    assert protocol_name(202, names) == "202 (xcluster)"
    assert protocol_name(3, names) == "3 (boot)"  # the kernel's own, without any file
    assert protocol_name(150, names) == "150"
