"""``nodedb ca init|issue|client``: the certificate commands of the ``nodedb`` command.

They work on files only and never connect anywhere. Each prints one line per file written and
the command to run next; ``--json`` prints the same as one JSON object. A failure is one line on
stderr and exit status 1 (2 for a malformed command line).

:mod:`nodedb.security.ca` (and so the ``cryptography`` library) is imported only when a ``ca``
command runs, so the other commands do not pay for it.
"""

import argparse
import json
import os
import sys

EXIT_ERROR = 1
EXIT_USAGE = 2


def _argument(check):
    """An argparse type that runs the :mod:`nodedb.security.ca` function named *check*, so that
    a bad value is a usage error."""

    def parse(text):
        from nodedb.security import ca

        try:
            getattr(ca, check)(text)
        except ca.CAError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return text

    return parse


def _days(text):
    from nodedb.security import ca

    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or not 1 <= value <= ca.MAX_DAYS:
        raise argparse.ArgumentTypeError(f"not a number of days from 1 to {ca.MAX_DAYS}: {text!r}")
    return value


def add_parser(subparsers):
    """Add the ``ca`` command and its three subcommands to the ``nodedb`` parser's *subparsers*."""
    parser = subparsers.add_parser(
        "ca", help="make the cluster's CA and certificates for hosts and clients (files only, no connection)"
    )
    commands = parser.add_subparsers(dest="ca_command", metavar="CA_COMMAND")
    commands.required = True
    name = _argument("validate_name")
    ip = _argument("validate_ip")

    def command(command_name, days, **kwargs):
        sub = commands.add_parser(command_name, **kwargs)
        sub.add_argument("directory", metavar="DIR", help="the CA directory")
        sub.add_argument("--days", type=_days, default=days, metavar="N", help=f"days of validity (default {days})")
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print the result as JSON")
        return sub

    command("init", 3650, help="make a new cluster CA in DIR: ca.pem and ca-key.pem")

    issue = command("issue", 825, help="issue a host certificate and key into DIR/hosts/NAME")
    issue.add_argument("--host", required=True, type=name, metavar="NAME", help="the host's DNS name or IP address")
    issue.add_argument(
        "--ip",
        action="append",
        default=[],
        type=ip,
        metavar="ADDR",
        help="an IP address the host is reached at, such as its advertised one (repeatable)",
    )
    issue.add_argument("--force", action="store_true", help="replace an existing certificate and key (rotation)")

    client = command("client", 825, help="issue a client certificate and key into DIR/clients/NAME")
    client.add_argument("name", type=name, metavar="NAME", help="the client's name (its certificate's CN)")
    client.add_argument("--force", action="store_true", help="replace an existing certificate and key (rotation)")
    return parser


def _describe(ca, path, subject):
    """What the file at *path* is, and its mode."""
    base = os.path.basename(path)
    mode = f"{os.stat(path).st_mode & 0o777:04o}"
    if base == ca.CA_KEY:
        return "CA private key: keep it secret and off the hosts", mode
    if base == ca.KEY:
        return "private key", mode
    until = f"valid until {ca.certificate_expiry(path):%Y-%m-%d %H:%M} UTC"
    if base == ca.CA_CERT and subject is None:
        return f"CA certificate, {until}", mode
    if base == ca.CA_CERT:
        return "copy of the CA certificate", mode
    return f"certificate for {subject}, {until}", mode


def run(args):
    """Run a ``nodedb ca`` command parsed by the ``nodedb`` parser.

    :return: the exit status.
    """
    from nodedb.security import ca

    try:
        if args.ca_command == "init":
            paths = ca.init_ca(args.directory, days=args.days)
            subject = None
            after = f"next, for each host: nodedb ca issue {args.directory} --host NAME --ip ADDRESS"
        elif args.ca_command == "issue":
            paths = ca.issue_host(args.directory, args.host, ips=args.ip, days=args.days, force=args.force)
            subject = args.host
            target = os.path.dirname(paths[0])
            after = (
                f"copy {target} to {args.host}, then start the node there with: "
                f"twistd -n nodedb --tls {target} --data DATA --listen ENDPOINT [--seed HOST:PORT]"
            )
        else:
            paths = ca.issue_client(args.directory, args.name, days=args.days, force=args.force)
            subject = args.name
            target = os.path.dirname(paths[0])
            after = f"use it with: nodedb --tls {target} --connect HOST:PORT status (or NODEDB_TLS={target})"
        files = [(path, *_describe(ca, path, subject)) for path in paths]
    except (ca.CAError, OSError) as e:
        sys.stderr.write(f"nodedb: {e}\n")
        return EXIT_ERROR
    if getattr(args, "json", False):
        written = [{"path": path, "what": what, "mode": mode} for path, what, mode in files]
        sys.stdout.write(json.dumps({"wrote": written, "next": after}) + "\n")
    else:
        for path, what, mode in files:
            sys.stdout.write(f"wrote {path} ({what}, mode {mode})\n")
        sys.stdout.write(after + "\n")
    return 0
