"""Keel's plugin for SPDK's rpc.py / spdk-rpc.

Usage (the module must be importable):

    PYTHONPATH=<keel>/python spdk-rpc --plugin keel_rpc keel_get_pollers

Adds Keel's own methods as subcommands. The dm methods come as dmsetup's verbs (dm_create,
dm_load, dm_suspend, dm_resume, dm_clear, dm_remove, dm_rename, dm_info, dm_table, dm_status,
dm_message, dm_deps, dm_ls, dm_targets, dm_wait) printing dmsetup's text formats; the md
methods as mdadm's (md_create, md_assemble, md_stop, md_get_arrays [--detail], md_examine,
md_add, md_remove, md_fail, md_set_sync_action, md_set_sync_speed, md_set_stripe_cache); the NBD server's as
nbd_server_start, nbd_server_stop, nbd_server_get_listeners, nbd_server_add_export,
nbd_server_remove_export and nbd_server_get_exports.
"""

from spdk.rpc.cmd_parser import print_dict, print_json


def spdk_rpc_plugin_initialize(subparsers):
    _add_dm_commands(subparsers)

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

    _add_md_commands(subparsers)
    _add_nbd_commands(subparsers)


# ---------------------------------------------------------------------------------------------
# The NBD server: nbd_server_* (SPDK's nbd_start_disk & co. attach kernel devices instead).

def _add_nbd_commands(subparsers):
    def nbd_server_start(args):
        print_json(args.client.call("nbd_server_start", {"listen": args.listen}))

    p = subparsers.add_parser("nbd_server_start",
                              help="Listen for NBD clients on HOST[:PORT] (port 10809 by default) or unix:/PATH; "
                              "prints the address as bound")
    p.add_argument("listen", nargs="?", default="127.0.0.1:10809",
                   help="HOST[:PORT] or unix:/PATH (default 127.0.0.1:10809)")
    p.set_defaults(func=nbd_server_start)

    def nbd_server_stop(args):
        print_json(args.client.call("nbd_server_stop", {"listen": args.listen}))

    p = subparsers.add_parser("nbd_server_stop",
                              help="Stop listening on an address; its connections end after their in-flight I/O")
    p.add_argument("listen", help="the address given to nbd_server_start (or the one it printed)")
    p.set_defaults(func=nbd_server_stop)

    def nbd_server_get_listeners(args):
        print_json(args.client.call("nbd_server_get_listeners"))

    p = subparsers.add_parser("nbd_server_get_listeners", help="The addresses the NBD server listens on")
    p.set_defaults(func=nbd_server_get_listeners)

    def nbd_server_add_export(args):
        params = {"bdev_name": args.bdev_name}
        if args.name is not None:
            params["name"] = args.name
        if args.description is not None:
            params["description"] = args.description
        if args.read_only:
            params["read_only"] = True
        print_json(args.client.call("nbd_server_add_export", params))

    p = subparsers.add_parser("nbd_server_add_export",
                              help="Export a bdev over NBD (it stays held: deleting it fails with EBUSY "
                              "until the export is removed); prints the export name")
    p.add_argument("bdev_name", help="the bdev to export")
    p.add_argument("-n", "--name", help="export name (default: the bdev name)")
    p.add_argument("-d", "--description", help="description shown to clients")
    p.add_argument("-r", "--read-only", action="store_true", help="refuse writes (EPERM)")
    p.set_defaults(func=nbd_server_add_export)

    def nbd_server_remove_export(args):
        params = {"name": args.name}
        if args.force:
            params["force"] = True
        print_json(args.client.call("nbd_server_remove_export", params))

    p = subparsers.add_parser("nbd_server_remove_export",
                              help="Remove an export (EBUSY while clients are connected, unless --force, "
                              "which disconnects them after their in-flight I/O)")
    p.add_argument("name", help="export name")
    p.add_argument("-f", "--force", action="store_true", help="disconnect connected clients")
    p.set_defaults(func=nbd_server_remove_export)

    def nbd_server_get_exports(args):
        print_json(args.client.call("nbd_server_get_exports"))

    p = subparsers.add_parser("nbd_server_get_exports",
                              help="Every export: name, bdev, read-only, connections with peer addresses")
    p.set_defaults(func=nbd_server_get_exports)


# ---------------------------------------------------------------------------------------------
# md RAID: mdadm's verbs over the md_* methods.

SYNC_ACTIONS = ["idle", "frozen", "resync", "recover", "check", "repair"]

DETAIL_LABEL_WIDTH = 18

MEMBER_STATE_TEXT = {
    "in_sync": "active sync",
    "rebuilding": "spare rebuilding",
    "spare": "spare",
    "faulty": "faulty",
}


def md_detail_text(a):
    """mdadm --detail's report for one md_get_arrays object."""
    def line(label, value):
        return label.rjust(DETAIL_LABEL_WIDTH) + " : " + str(value) + "\n"
    out = a["name"] + ":\n"
    out += line("Version", "1.2")
    out += line("Raid Level", a["level"])
    out += line("Array Size", "%d KiB" % (a["size_blocks"] * a["block_size"] // 1024))
    out += line("Raid Devices", a["raid_devices"])
    out += line("Total Devices", len(a["members"]))
    out += "\n"
    out += line("State", a["state"])
    out += line("Active Devices", a["active_devices"])
    out += line("Working Devices", a["working_devices"])
    out += line("Failed Devices", a["failed_devices"])
    out += line("Spare Devices", a["spare_devices"])
    if a.get("layout") or a.get("chunk_kb"):
        out += "\n"
        if a.get("layout"):
            out += line("Layout", a["layout"])
        if a.get("chunk_kb"):
            out += line("Chunk Size", "%dK" % a["chunk_kb"])
    if a.get("bitmap"):
        out += "\n" + line("Intent Bitmap", "Internal")
    action = a.get("sync_action", "idle")
    if action not in ("idle", "frozen") and a.get("sync_progress") is not None:
        label = {"recover": "Rebuild Status", "resync": "Resync Status"}.get(action, "Check Status")
        out += "\n" + line(label, "%d%% complete" % int(a["sync_progress"]))
        speed = a.get("sync_speed_kbs") or 0
        if speed:
            status = "speed=%dK/sec" % speed
            if a.get("sync_eta_s") is not None:
                status += " finish=%.1fmin" % (a["sync_eta_s"] / 60.0)
            out += line("Sync Speed", status)
    out += "\n"
    out += line("UUID", a["uuid"])
    out += line("Events", a["events"])
    out += "\n    Number   RaidDevice State\n"
    for i, m in enumerate(a["members"]):
        role = "-" if m["role"] is None else str(m["role"])
        out += "    %6s   %10s %s   %s\n" % (i, role, MEMBER_STATE_TEXT.get(m["state"], m["state"]), m["bdev"])
    return out


def _add_md_commands(subparsers):
    def md_examine(args):
        print_dict(args.client.call("md_examine", {"bdev": args.bdev}))

    p = subparsers.add_parser(
        "md_examine",
        help="mdadm --examine: what one member bdev's md v1.2 superblock says",
    )
    p.add_argument("bdev", help="bdev holding the member")
    p.set_defaults(func=md_examine)

    def md_create(args):
        params = {"name": args.name, "level": args.level, "members": args.members}
        if args.chunk is not None:
            params["chunk_kb"] = args.chunk
        if args.layout is not None:
            params["layout"] = args.layout
        if args.bitmap is not None:
            params["bitmap"] = args.bitmap
        if args.assume_clean:
            params["assume_clean"] = True
        if args.uuid is not None:
            params["uuid"] = args.uuid
        if args.force:
            params["force"] = True
        print_json(args.client.call("md_create", params))

    p = subparsers.add_parser(
        "md_create",
        help="mdadm --create: an md array (a bdev named NAME) over MEMBER bdevs in role order",
    )
    p.add_argument("-n", "--name", required=True, help="array name (and bdev name)")
    p.add_argument("-l", "--level", required=True, help="linear, raid0, raid1, raid4, raid5, raid6 or raid10")
    p.add_argument("-c", "--chunk", type=int, help="chunk size in KiB (raid0, raid4/5/6, raid10; default 512)")
    p.add_argument("-p", "--layout", help="raid0: original or alternate; raid5/6: left-symmetric (default), la, ra, rs, parity-first, parity-last, raid6 also the -6 layouts; raid10: n2, f2, o2 (default n2)")
    p.add_argument("-b", "--bitmap", choices=["internal", "none"],
                   help="write-intent bitmap (default: internal for raid1/raid10, none otherwise)")
    p.add_argument("--assume-clean", action="store_true", help="skip the initial resync (raid1, raid10)")
    p.add_argument("-u", "--uuid", help="array UUID (random when absent)")
    p.add_argument("-f", "--force", action="store_true",
                   help="create over members that already carry an md superblock (refused otherwise)")
    p.add_argument("members", nargs="+", metavar="MEMBER", help="member bdevs")
    p.set_defaults(func=md_create)

    def md_assemble(args):
        params = {}
        if args.name is not None:
            params["name"] = args.name
        if args.uuid is not None:
            params["uuid"] = args.uuid
        if args.members:
            params["members"] = args.members
        if not params:
            raise SystemExit("md_assemble needs MEMBERs, --uuid or --name")
        if args.force:
            params["force"] = True
        print_json(args.client.call("md_assemble", params))

    p = subparsers.add_parser(
        "md_assemble",
        help="mdadm --assemble: start an array from its members (named, or every examined bdev "
        "whose superblock carries --uuid / --name)",
    )
    p.add_argument("-n", "--name", help="array name (default: the name in the superblocks)")
    p.add_argument("-u", "--uuid", help="array UUID")
    p.add_argument("-f", "--force", action="store_true",
                   help="start a dirty and degraded raid4/5/6 anyway (the write hole)")
    p.add_argument("members", nargs="*", metavar="MEMBER", help="member bdevs")
    p.set_defaults(func=md_assemble)

    def md_stop(args):
        print_json(args.client.call("md_stop", {"name": args.name}))

    p = subparsers.add_parser("md_stop", help="mdadm --stop: unregister the array, mark members clean")
    p.add_argument("name", help="array name")
    p.set_defaults(func=md_stop)

    def md_get_arrays(args):
        arrays = args.client.call("md_get_arrays", {"name": args.name} if args.name else {})
        if args.detail:
            print("\n".join(md_detail_text(a) for a in arrays), end="")
        else:
            print_dict(arrays)

    p = subparsers.add_parser("md_get_arrays", help="mdadm --detail: arrays, their state, members and sync")
    p.add_argument("name", nargs="?", help="only this array")
    p.add_argument("-D", "--detail", action="store_true", help="print mdadm --detail's text instead of JSON")
    p.set_defaults(func=md_get_arrays)

    def member_verb(method):
        def run(args):
            print_json(args.client.call(method, {"name": args.name, "bdev": args.bdev}))
        return run

    for verb, text in (("md_add", "mdadm --add: add BDEV as a spare (or re-add it into its old role)"),
                       ("md_remove", "mdadm --remove: take a spare or faulty BDEV out and release it"),
                       ("md_fail", "mdadm --fail: mark member BDEV faulty")):
        p = subparsers.add_parser(verb, help=text)
        p.add_argument("name", help="array name")
        p.add_argument("bdev", help="member bdev")
        p.set_defaults(func=member_verb(verb))

    def md_set_sync_action(args):
        print_json(args.client.call("md_set_sync_action", {"name": args.name, "action": args.action}))

    p = subparsers.add_parser("md_set_sync_action",
                              help="echo ACTION > md/sync_action: start a check/repair/resync, stop (idle) or freeze")
    p.add_argument("name", help="array name")
    p.add_argument("action", choices=SYNC_ACTIONS)
    p.set_defaults(func=md_set_sync_action)

    def md_set_sync_speed(args):
        params = {"name": args.name}
        if args.min_kbs is not None:
            params["min_kbs"] = args.min_kbs
        if args.max_kbs is not None:
            params["max_kbs"] = args.max_kbs
        if len(params) == 1:
            raise SystemExit("md_set_sync_speed needs --min, --max or both")
        print_json(args.client.call("md_set_sync_speed", params))

    p = subparsers.add_parser("md_set_sync_speed",
                              help="md/sync_speed_min and _max: resync/recovery speed limits in KiB/s")
    p.add_argument("name", help="array name")
    p.add_argument("--min", type=int, dest="min_kbs", help="KiB/s kept even under foreground I/O")
    p.add_argument("--max", type=int, dest="max_kbs", help="KiB/s never exceeded")
    p.set_defaults(func=md_set_sync_speed)

    def md_set_stripe_cache(args):
        print_json(args.client.call("md_set_stripe_cache", {"name": args.name, "entries": args.entries}))

    p = subparsers.add_parser("md_set_stripe_cache",
                              help="echo N > md/stripe_cache_size: raid4/5/6 stripe cache entries (17..32768)")
    p.add_argument("name", help="array name")
    p.add_argument("entries", type=int, help="entries (pages per member), Linux's default 256")
    p.set_defaults(func=md_set_stripe_cache)


# ---------------------------------------------------------------------------------------------
# Device-mapper: dmsetup's verbs over the dm_* methods, printing dmsetup's formats.

INFO_LABEL_WIDTH = 19


def dm_info_text(i):
    """dmsetup info's block for one device (spec §7.1), ending with a blank line."""
    def line(label, value):
        return (label + ":").ljust(INFO_LABEL_WIDTH) + str(value) + "\n"
    out = line("Name", i["name"]) + line("State", i["state"])
    if i.get("read_ahead") is not None:
        out += line("Read Ahead", i["read_ahead"])
    out += line("Tables present", i["tables_present"])
    out += line("Open count", i["open_count"])
    out += line("Event number", i["event_nr"])
    out += line("Major, minor", "%d, %d" % (i["major"], i["minor"]))
    out += line("Number of targets", i["target_count"])
    if i.get("uuid"):
        out += "UUID: " + i["uuid"] + "\n"
    return out + "\n"


INFO_FIELDS = {
    "name": lambda i: i["name"],
    "major": lambda i: str(i["major"]),
    "minor": lambda i: str(i["minor"]),
    "attr": lambda i: i["attr"],
    "open": lambda i: str(i["open_count"]),
    "segments": lambda i: str(i["target_count"]),
    "events": lambda i: str(i["event_nr"]),
    "uuid": lambda i: i.get("uuid") or "",
}


def dm_info_columns(infos, headings=True):
    """dmsetup info -c (spec §7.2)."""
    width = max([16] + [len(i["name"]) for i in infos])
    out = []
    if headings:
        out.append("Name".ljust(width) + " Maj Min Stat Open Targ Event  UUID")
    for i in infos:
        row = "%s %3d %3d %s %4d %4d %6d" % (i["name"].ljust(width), i["major"], i["minor"], i["attr"],
                                            i["open_count"], i["target_count"], i["event_nr"])
        if i.get("uuid"):
            row += " " + i["uuid"]
        out.append(row)
    return "\n".join(out) + "\n" if out else ""


def _table_text(args):
    if getattr(args, "table", None) is not None and getattr(args, "file", None) is not None:
        raise SystemExit("give either --table or --file, not both")
    if getattr(args, "file", None) is not None:
        with open(args.file) as f:
            return f.read()
    return getattr(args, "table", None)


def _add_dm_commands(subparsers):
    def dm_create(args):
        params = {"name": args.name}
        table = None if args.notable else _table_text(args)
        if table is not None:
            params["table"] = table
        if args.uuid:
            params["uuid"] = args.uuid
        if args.readonly:
            params["readonly"] = True
        if args.bdev_uuid:
            params["bdev_uuid"] = args.bdev_uuid
        if args.minor is not None:
            params["minor"] = args.minor
        args.client.call("dm_create", params)

    p = subparsers.add_parser("dm_create", help="dmsetup create: a mapped device (a bdev named NAME), "
                              "with its table live at once")
    p.add_argument("name")
    p.add_argument("--table", help="table text: '<start> <len> <type> <args>' lines (bdev names as devices)")
    p.add_argument("-f", "--file", help="read the table from this file")
    p.add_argument("-u", "--uuid", help="dm uuid (any string up to 128 bytes)")
    p.add_argument("-r", "--readonly", action="store_true", help="the table is read-only")
    p.add_argument("-n", "--notable", action="store_true", help="create without a table")
    p.add_argument("--bdev-uuid", help="UUID of the device's bdev")
    p.add_argument("-m", "--minor", type=int, help="minor number (default: the lowest free)")
    p.set_defaults(func=dm_create)

    def dm_load(args):
        table = _table_text(args)
        if table is None:
            raise SystemExit("dm_load needs --table or --file")
        params = {"name": args.name, "table": table}
        if args.readonly:
            params["readonly"] = True
        args.client.call("dm_load", params)

    p = subparsers.add_parser("dm_load", aliases=["dm_reload"],
                              help="dmsetup load: stage a table in the inactive slot (resume swaps it in)")
    p.add_argument("name")
    p.add_argument("--table")
    p.add_argument("-f", "--file")
    p.add_argument("-r", "--readonly", action="store_true")
    p.set_defaults(func=dm_load)

    def dm_suspend(args):
        params = {"name": args.name}
        if args.noflush:
            params["noflush"] = True
        if args.timeout_ms is not None:
            params["timeout_ms"] = args.timeout_ms
        args.client.call("dm_suspend", params)

    p = subparsers.add_parser("dm_suspend", help="dmsetup suspend: hold new I/O, wait for in-flight I/O")
    p.add_argument("name")
    p.add_argument("--noflush", action="store_true",
                   help="requeue I/O that fails because a base bdev went away instead of failing it")
    p.add_argument("--timeout-ms", type=int, dest="timeout_ms",
                   help="give up (and run the device again) if in-flight I/O has not drained by then; "
                        "0 waits as long as it takes (default 10000)")
    p.set_defaults(func=dm_suspend)

    def simple(method, **extra):
        def run(args):
            params = {"name": args.name}
            for key, attr in extra.items():
                if getattr(args, attr):
                    params[key] = True
            args.client.call(method, params)
        return run

    def dm_resume(args):
        params = {"name": args.name}
        if args.timeout_ms is not None:
            params["timeout_ms"] = args.timeout_ms
        args.client.call("dm_resume", params)

    p = subparsers.add_parser("dm_resume", help="dmsetup resume: swap in the staged table, release held I/O")
    p.add_argument("name")
    p.add_argument("--timeout-ms", type=int, dest="timeout_ms",
                   help="bound on the drain a table swap needs (as dm_suspend's)")
    p.set_defaults(func=dm_resume)

    p = subparsers.add_parser("dm_clear", help="dmsetup clear: drop the staged (inactive) table")
    p.add_argument("name")
    p.set_defaults(func=simple("dm_clear"))

    p = subparsers.add_parser("dm_remove", help="dmsetup remove: delete a mapped device (EBUSY while open)")
    p.add_argument("name")
    p.add_argument("-f", "--force", action="store_true", help="even while open: outstanding I/O fails")
    p.set_defaults(func=simple("dm_remove", force="force"))

    def dm_rename(args):
        if (args.new_name is None) == (args.setuuid is None):
            raise SystemExit("dm_rename needs NEW_NAME or --setuuid UUID")
        params = {"name": args.name}
        if args.setuuid is not None:
            params["new_uuid"] = args.setuuid
        else:
            params["new_name"] = args.new_name
        args.client.call("dm_rename", params)

    p = subparsers.add_parser("dm_rename", help="dmsetup rename NAME NEW_NAME | NAME --setuuid UUID")
    p.add_argument("name")
    p.add_argument("new_name", nargs="?")
    p.add_argument("--setuuid")
    p.set_defaults(func=dm_rename)

    def dm_info(args):
        res = args.client.call("dm_info", {"name": args.name} if args.name else None)
        infos = res if isinstance(res, list) else [res]
        if args.output:
            fields = args.output.split(",")
            for f in fields:
                if f not in INFO_FIELDS:
                    raise SystemExit("unknown field '%s' (known: %s)" % (f, ",".join(INFO_FIELDS)))
            for i in infos:
                print(":".join(INFO_FIELDS[f](i) for f in fields))
        elif args.columns:
            print(dm_info_columns(infos, not args.noheadings), end="")
        else:
            print("".join(dm_info_text(i) for i in infos), end="")

    p = subparsers.add_parser("dm_info", help="dmsetup info [NAME]")
    p.add_argument("name", nargs="?")
    p.add_argument("-c", "--columns", action="store_true")
    p.add_argument("--noheadings", action="store_true")
    p.add_argument("-o", "--output", help="with -c: comma-separated fields (%s)" % ",".join(INFO_FIELDS))
    p.set_defaults(func=dm_info)

    def dm_table(args):
        params = {}
        if args.name:
            params["name"] = args.name
        if args.inactive:
            params["inactive"] = True
        text = args.client.call("dm_table", params or None)
        print(text if text else "", end="" if text else "\n")

    p = subparsers.add_parser("dm_table", help="dmsetup table [--inactive] [NAME]")
    p.add_argument("name", nargs="?")
    p.add_argument("--inactive", action="store_true", help="the staged table")
    p.set_defaults(func=dm_table)

    def dm_status(args):
        text = args.client.call("dm_status", {"name": args.name} if args.name else None)
        print(text if text else "", end="" if text else "\n")

    p = subparsers.add_parser("dm_status", help="dmsetup status [NAME]")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=dm_status)

    def dm_message(args):
        answer = args.client.call("dm_message", {"name": args.name, "sector": args.sector,
                                                  "message": " ".join(args.message)})
        if answer:
            print(answer)

    p = subparsers.add_parser("dm_message", help="dmsetup message NAME SECTOR MESSAGE...")
    p.add_argument("name")
    p.add_argument("sector", type=int)
    p.add_argument("message", nargs="+")
    p.set_defaults(func=dm_message)

    def dm_deps(args):
        deps = args.client.call("dm_deps", {"name": args.name})
        print("%d dependencies\t: %s" % (len(deps), " ".join("(%s)" % d for d in deps)))

    p = subparsers.add_parser("dm_deps", help="dmsetup deps NAME: the bdevs the live table uses")
    p.add_argument("name")
    p.set_defaults(func=dm_deps)

    def dm_ls(args):
        devs = args.client.call("dm_list_devices")
        if not devs:
            print("No devices found")
        for d in devs:
            print("%s\t(%d:%d)" % (d["name"], d["major"], d["minor"]))

    p = subparsers.add_parser("dm_ls", aliases=["dm_list_devices"], help="dmsetup ls")
    p.set_defaults(func=dm_ls)

    def dm_targets(args):
        for t in args.client.call("dm_list_targets"):
            print("%sv%d.%d.%d" % (t["name"].ljust(16), *t["version"]))

    p = subparsers.add_parser("dm_targets", aliases=["dm_list_targets"], help="dmsetup targets")
    p.set_defaults(func=dm_targets)

    def dm_wait(args):
        params = {"name": args.name, "event_nr": args.event_nr}
        if args.wait_timeout_ms is not None:
            params["timeout_ms"] = args.wait_timeout_ms
        info = args.client.call("dm_wait", params)
        if args.print_info:
            print(dm_info_text(info), end="")

    p = subparsers.add_parser("dm_wait", help="dmsetup wait NAME [EVENT_NR]: until the event number differs")
    p.add_argument("name")
    p.add_argument("event_nr", type=int, nargs="?", default=0)
    p.add_argument("--timeout", type=int, dest="wait_timeout_ms", help="give up after this many milliseconds")
    # Not dest "verbose": spdk-rpc's own -v/--verbose lives in the same namespace.
    p.add_argument("-v", "--verbose", action="store_true", dest="print_info", help="print the info afterwards")
    p.set_defaults(func=dm_wait)
