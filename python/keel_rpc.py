"""Keel's plugin for SPDK's rpc.py / spdk-rpc.

Usage (the module must be importable):

    PYTHONPATH=<keel>/python spdk-rpc --plugin keel_rpc keel_get_pollers

Adds Keel's own methods as subcommands. The dm and md methods join here as they land.
"""

from spdk.rpc.cmd_parser import print_dict


def spdk_rpc_plugin_initialize(subparsers):
    def keel_get_pollers(args):
        params = {}
        if args.lcore is not None:
            params["lcore"] = args.lcore
        print_dict(args.client.call("keel_get_pollers", params or None))

    p = subparsers.add_parser(
        "keel_get_pollers",
        help="Per-reactor poller view: every poller with its period, run and busy counts, "
        "and each reactor's busy/idle ticks",
    )
    p.add_argument("-l", "--lcore", type=int, help="only this core")
    p.set_defaults(func=keel_get_pollers)

    def md_examine(args):
        print_dict(args.client.call("md_examine", {"bdev": args.bdev}))

    p = subparsers.add_parser(
        "md_examine",
        help="What mdadm --examine shows for one member bdev (its md v1.2 superblock)",
    )
    p.add_argument("bdev", help="bdev holding the member")
    p.set_defaults(func=md_examine)
