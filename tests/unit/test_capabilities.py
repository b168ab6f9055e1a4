"""Capabilities from `zfs` usage text: current OpenZFS has every feature, zfs-fuse none."""

from __future__ import annotations

from zfsrepl import capabilities
from zfsrepl.capabilities import Capabilities

# `zfs` without arguments, OpenZFS 2.3 (the lines that matter, as it prints them)
OPENZFS = """usage: zfs command args ...
where 'command' is one of the following:

\tsnapshot [-r] [-o property=value] ... <filesystem|volume>@<snap> ...
\trollback [-rRf] <snapshot>
\tdestroy [-fnpRrv] <filesystem|volume>
\tdestroy [-dnpRrv] <filesystem|volume>@<snap>[%<snap>][,...]
\tdestroy <filesystem|volume>#<bookmark>

\tlist [-Hp] [-r|-d max] [-o property[,...]] [-s property]...
\t    [-S property]... [-t type[,...]] [filesystem|volume|snapshot] ...

\tsend [-DLPbcehnpsVvw] [-i|-I snapshot]
\t     [-R [-X dataset[,dataset]...]]     <snapshot>
\tsend [-DnVvPLecw] [-i snapshot|bookmark] <filesystem|volume|snapshot>
\tsend [-DnPpVvLec] [-i bookmark|snapshot] --redact <bookmark> <snapshot>
\tsend [-nVvPe] -t <receive_resume_token>
\tsend [-PnVv] --saved filesystem
\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...
\t    <filesystem|volume|snapshot>
\treceive [-vMnsFhu] [-o <property>=<value>] ... [-x <property>] ...
\t    [-d | -e] <filesystem>
\treceive -A <filesystem|volume>

\thold [-r] <tag> <snapshot> ...
\tholds [-rHp] <snapshot> ...
\trelease [-r] <tag> <snapshot> ...
\tbookmark <snapshot|bookmark> <newbookmark>
"""

# zfs-fuse 0.7.0 (pool version 23)
FUSE = """usage: zfs command args ...
where 'command' is one of the following:

\tsnapshot [-r] [-o property=value] ... <filesystem@snapname|volume@snapname>
\tdestroy [-rRf] <filesystem|volume>
\tdestroy [-rRd] <snapshot>

\tlist [-rH][-d max] [-o property[,...]] [-t type[,...]] [-s property] ...
\t    [-S property] ... [filesystem|volume|snapshot] ...

\tsend [-vRDp] [-[iI] snapshot] <snapshot>
\treceive [-vnFu] <filesystem|volume|snapshot>
\treceive [-vnFu] [-d | -e] <filesystem>

\thold [-r] <tag> <snapshot> ...
\tholds [-r] <snapshot> ...
\trelease [-r] <tag> <snapshot> ...
"""


def test_current_openzfs_has_everything() -> None:
    caps = capabilities.from_usage(OPENZFS)
    assert caps == Capabilities(resume=True, bookmarks=True, holds=True, raw_send=True,
                                estimate=True, compressed=True, list_p=True, recv_props=True,
                                multi_snapshot=True, destroy_list=True)


def test_zfs_fuse_has_none_of_it() -> None:
    assert capabilities.from_usage(FUSE) == capabilities.NONE
    assert capabilities.NONE.names() == []


def test_nothing_known_from_an_error() -> None:
    # a host where zfs cannot even start says so instead of its usage
    assert capabilities.from_usage("internal error: failed to initialize ZFS library") \
        == capabilities.NONE


def test_a_feature_needs_every_form_it_uses() -> None:
    no_abort = OPENZFS.replace("\treceive -A <filesystem|volume>\n", "")
    assert not capabilities.from_usage(no_abort).resume
    no_token = OPENZFS.replace("\tsend [-nVvPe] -t <receive_resume_token>\n", "")
    assert not capabilities.from_usage(no_token).resume
    no_release = OPENZFS.replace("\trelease [-r] <tag> <snapshot> ...\n", "")
    assert not capabilities.from_usage(no_release).holds


def test_continuation_lines_belong_to_their_command() -> None:
    # receive's -o appears on its first line, the target on the next
    caps = capabilities.from_usage("\treceive [-s] [-o <p>=<v>]\n\t    <filesystem>\n"
                                   "\treceive -A <filesystem>\n\tsend [-n] -t <token>\n")
    assert caps.resume and caps.recv_props
