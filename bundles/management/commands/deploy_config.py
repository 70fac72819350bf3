"""``manage.py deploy_config nginx [--upstream H:P …] [--listen PORT …] [--server-name …]``."""

from __future__ import annotations

import shlex

from django.core.management.base import BaseCommand, CommandError

from bundles.deploy_config import DEFAULT_UPSTREAMS, ConfigError, NginxOptions, render_nginx


class Command(BaseCommand):
    help = (
        "Print the nginx configuration for this deployment (deploy/nginx/tollgate.conf rendered "
        "with its settings: long-poll timeouts from BUNDLE_MAX_WAIT_SECONDS, STATIC_ROOT, "
        "BUNDLE_LOCAL_DIR and BUNDLE_ACCEL_REDIRECT). Run it with the production environment "
        "(/etc/tollgate/tollgate.env) and again after changing those settings."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("target", choices=["nginx"], help="what to render")
        parser.add_argument(
            "--upstream", action="append", metavar="HOST:PORT",
            help="a web process (repeat for each; default: "
                 f"{' and '.join(DEFAULT_UPSTREAMS)})")
        parser.add_argument("--listen", action="append", metavar="[ADDRESS:]PORT",
                            help="where nginx listens (repeatable; default 80, or 443 with TLS)")
        parser.add_argument("--server-name", action="append", metavar="NAME",
                            help="server name (repeatable; default: ALLOWED_HOSTS)")
        parser.add_argument("--tls-certificate", default="", metavar="PATH",
                            help="certificate chain: nginx terminates TLS (with --tls-key)")
        parser.add_argument("--tls-key", default="", metavar="PATH", help="its private key")
        parser.add_argument(
            "--behind-tls-balancer", action="store_true",
            help="a load balancer in front of nginx terminates TLS and forwards only HTTPS: "
                 "nginx tells the application X-Forwarded-Proto: https")

    def handle(self, *args, target: str, upstream=None, listen=None, server_name=None,
               tls_certificate: str = "", tls_key: str = "", behind_tls_balancer: bool = False,
               **options) -> None:
        tls = bool(tls_certificate or tls_key)
        argv = ["nginx"]
        for flag, values in (("--upstream", upstream), ("--listen", listen),
                             ("--server-name", server_name)):
            for value in values or []:
                argv += [flag, value]
        for flag, value in (("--tls-certificate", tls_certificate), ("--tls-key", tls_key)):
            if value:
                argv += [flag, value]
        if behind_tls_balancer:
            argv.append("--behind-tls-balancer")
        nginx = NginxOptions(
            upstreams=upstream or list(DEFAULT_UPSTREAMS),
            listens=listen or (["443"] if tls else ["80"]),
            server_names=server_name or [],
            tls_certificate=tls_certificate, tls_key=tls_key,
            behind_tls_balancer=behind_tls_balancer,
            argv=shlex.join(argv[1:]) if len(argv) > 1 else "",
        )
        try:
            self.stdout.write(render_nginx(nginx), ending="")
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
