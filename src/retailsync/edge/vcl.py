"""The VCL for a Varnish (7.1+, VCL 4.1, with the xkey vmod of varnish-modules) in front of the
API: ``render_vcl(backend_host, backend_port)``.

What it caches. Only GET and HEAD answers the API marks shareable: ``Cache-Control`` naming
``public`` and a lifetime (``max-age`` or ``s-maxage``, the latter first), and neither
``private``, ``no-store`` nor ``no-cache``, and no ``Set-Cookie``. Anything else, including an
answer without ``Cache-Control``, is stored as hit-for-miss only: the next request for the URL
goes to the API again, and may be cached if that answer is shareable.

Authorization. Our API takes ``Authorization: Bearer <key>``. Varnish does not pass such a
request by itself (as its built-in VCL would): it looks it up like any other, on the URL and
Host alone, and the API's answer decides. A ``public`` answer is shared with every client,
whatever key (or none) it sends, so the API must mark ``public`` only what any caller of the
edge may read; a ``private`` answer, or one without ``public``, is never stored and never
served to another request. Requests with a ``Cookie`` are passed (our API uses no cookies; a
response could depend on one).

Surrogate keys. The API tags each answer with ``Surrogate-Key: k1 k2 ...``; on a cacheable
answer the VCL copies them into ``xkey``, the header the xkey vmod indexes objects by.
``xkey`` never reaches clients; ``Surrogate-Key`` does (useful when debugging a purge).

Purging. ``PURGE`` with ``xkey-purge: k1 k2 ...`` (spaces or commas) from an address in the
``purge_from`` ACL hard-purges every object tagged with any of the keys and answers 200 with
the count in the ``xkey-purged`` header and the body ``{"purged": N}``. From elsewhere: 403;
without the header: 400. Nothing else purges (no purge by URL).

Also: ``X-Cache: HIT`` on answers from the cache (fresh, in grace, or a 304), ``MISS`` on
every other; ``Age`` as Varnish sets it. A conditional GET (``If-None-Match``) on a cached
object with a matching ``ETag`` is answered 304 by Varnish itself. The change stream
(``/v1/changes``, or any ``Accept: text/event-stream``) is passed, with an hour between bytes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from string import Template

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")

# Token match in a Cache-Control value, for the VCL's (PCRE2) regular expressions.
_CC = r"(?i)(^|[\s,])"

_VCL = Template(
    r'''vcl 4.1;
# Rendered by retailsync.edge.vcl.render_vcl; see that module for what it does and why.

import std;
import xkey;

backend api {
    .host = "$host";
    .port = "$port";
    .connect_timeout = 1s;
    .first_byte_timeout = 10s;
    .between_bytes_timeout = 10s;
    .max_connections = 200;
}

acl purgers {
$acl}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (!req.http.xkey-purge) {
            return (synth(400, "PURGE needs an xkey-purge header"));
        }
        std.collect(req.http.xkey-purge, " ");
        set req.http.xkey-purged = xkey.purge(req.http.xkey-purge);
        return (synth(200, "Purged"));
    }
    unset req.http.xkey-purged;
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    if (req.http.Accept ~ "(?i)text/event-stream" || req.url ~ "^/v1/changes([?/]|$$)") {
        return (pass);
    }
    if (req.http.Cookie) {
        return (pass);
    }
    # Authorization or not: look it up (on URL and Host, the built-in vcl_hash); only an
    # answer marked public is ever stored, and so ever shared (vcl_backend_response).
    return (hash);
}

sub vcl_backend_fetch {
    if (bereq.http.Accept ~ "(?i)text/event-stream" || bereq.url ~ "^/v1/changes([?/]|$$)") {
        set bereq.between_bytes_timeout = 1h;
    }
}

sub vcl_backend_response {
    unset beresp.http.xkey;
    if (bereq.uncacheable) {
        return (deliver);
    }
    if (beresp.http.Set-Cookie
        || beresp.http.Cache-Control ~ "${cc}(private|no-store|no-cache)([\s,=]|$$)"
        || beresp.http.Cache-Control !~ "${cc}public([\s,]|$$)"
        || beresp.http.Cache-Control !~ "${cc}(s-maxage|max-age)\s*="
        || beresp.http.Vary == "*"
        || beresp.ttl <= 0s) {
        # Hit-for-miss: not stored, not shared; the next answer for this URL may be.
        set beresp.ttl = 120s;
        set beresp.grace = 0s;
        set beresp.uncacheable = true;
        return (deliver);
    }
    if (beresp.http.Surrogate-Key) {
        std.collect(beresp.http.Surrogate-Key, " ");
        set beresp.http.xkey = beresp.http.Surrogate-Key;
    }
    return (deliver);
}

sub vcl_deliver {
    unset resp.http.xkey;
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}

sub vcl_synth {
    if (req.method == "PURGE") {
        set resp.http.Content-Type = "application/json";
        if (resp.status == 200) {
            set resp.http.xkey-purged = req.http.xkey-purged;
            synthetic({"{"purged": "} + req.http.xkey-purged + "}");
        } else {
            synthetic({"{"error": ""} + resp.reason + {"""} + "}");
        }
        return (deliver);
    }
}
'''
)


def render_vcl(
    backend_host: str,
    backend_port: int,
    purge_from: Sequence[str] = ("127.0.0.1", "::1"),
) -> str:
    """The VCL for a Varnish in front of the API at ``backend_host:backend_port``, taking
    PURGE from the addresses or networks (``10.0.0.0/8``) in ``purge_from``.

    Raises ValueError for a host that is neither an IP address nor a host name, a port out of
    range, or a ``purge_from`` entry that is not an address or network.
    """
    if not _is_host(backend_host):
        raise ValueError(f"backend host {backend_host!r} is not an IP address or host name")
    if not 0 < backend_port < 65536:
        raise ValueError(f"backend port {backend_port} is out of range")
    return _VCL.substitute(
        host=backend_host,
        port=backend_port,
        acl="".join(f"    {_acl_entry(entry)};\n" for entry in purge_from),
        cc=_CC,
    )


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return _HOSTNAME.match(host) is not None
    return True


def _acl_entry(entry: str) -> str:
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ValueError(f"purge_from entry {entry!r} is not an IP address or network") from None
    if network.prefixlen == network.max_prefixlen:
        return f'"{network.network_address}"'
    return f'"{network.network_address}"/{network.prefixlen}'
