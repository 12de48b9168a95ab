"""Request-target normalisation, so routing and the upstream see the same path."""

from __future__ import annotations


def normalize_target(target: str) -> str:
    """Remove dot segments (RFC 3986 5.2.4) from the path of ``target``, keeping the query.

    ``%2e`` counts as ``.`` so ``/public/%2e%2e/admin`` cannot reach a route
    its literal form would not. Percent-encoded slashes (``%2f``) are left
    alone: they are data inside one segment, not separators.
    """
    q = target.find("?")
    path, query = (target, "") if q == -1 else (target[:q], target[q:])
    segments = path.split("/")
    out: list[str] = []
    for seg in segments[1:]:
        dots = seg.replace("%2e", ".").replace("%2E", ".")
        if dots == ".":
            continue
        if dots == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    normalized = "/" + "/".join(out)
    if segments[-1] in (".", "..", "%2e", "%2E", "%2e%2e", "%2E%2E", "%2e.", ".%2e") and out:
        normalized += "/"  # `/a/b/..` names the directory `/a/`
    return normalized + query
