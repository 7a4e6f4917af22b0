#!/usr/bin/env python3
"""What a (newer) OpenAI OpenAPI document has that the contract in protos/ lacks, and the reverse.

    .venv/bin/python scripts/spec_drift.py NEW_OPENAPI.yaml [--verbose]

For the covered endpoints (spec/endpoints.tsv, every one bound to an RPC) it lists:

- GAP   endpoints the document no longer has (removed or renamed upstream);
- GAP   parameters and properties the document has and the protos lack, request and answer;
- info  fields the protos have and the document does not (removed upstream, or a property
        another variant of a merged union has), scalar presence that no longer matches, and
        query fields the document no longer lists;
- info  the document's endpoints under a covered path prefix that no RPC serves (new ones).

Exit status 1 when there is a GAP, else 0 (CI runs it on the vendored spec: tests/contract/
test_spec_drift.py). The comparison is the contract tests' own (tests/support/fidelity.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import fidelity, protomodel, specmodel  # noqa: E402

_MISSING = re.compile(r"^(?P<where>.+): missing field for spec property '(?P<prop>[^']+)'$")


def covered_prefixes(endpoints: list[specmodel.Endpoint]) -> set[str]:
    return {"/" + e.path.strip("/").split("/")[0] for e in endpoints}


def drift(document: Path, verbose: bool) -> tuple[list[str], list[str]]:
    specmodel.use_spec(document)
    spec = specmodel.load_spec()
    model = protomodel.load_model()
    endpoints = specmodel.load_endpoints()
    gaps: list[str] = []
    info: list[str] = []

    for e in endpoints:
        if e.method.lower() not in spec.get("paths", {}).get(e.path, {}):
            gaps.append(f"endpoint  {e.method} {e.path}: not in the document")
    bound = {(r.http.method, r.http.path) for r in model.rpcs if r.http}
    prefixes = covered_prefixes(endpoints)
    for path, item in sorted(spec.get("paths", {}).items()):
        if not any(path == p or path.startswith(p + "/") for p in prefixes):
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            if method in item and (method.upper(), path) not in bound:
                info.append(f"endpoint  {method.upper()} {path}: new under a covered prefix, no RPC")

    tiers = {(e.method, e.path): e.tier for e in endpoints}
    for rpc in model.rpcs:
        assert rpc.http is not None
        key = (rpc.http.method, rpc.http.path)
        if key not in tiers or rpc.http.method.lower() not in spec.get("paths", {}).get(rpc.http.path, {}):
            continue
        path_item = spec["paths"][rpc.http.path]
        op = path_item[rpc.http.method.lower()]
        params = {specmodel.field_name(n) for n in specmodel.parameters(op, path_item)}
        request = model.messages[rpc.input_type].name
        label = f"{rpc.service}/{rpc.name}"
        for finding in fidelity.check_rpc(model, rpc, tiers[key]).findings:
            m = _MISSING.match(finding)
            if m is None:
                top_level = "." not in finding.split(":")[0]
                if verbose or ("is not in the spec" in finding and top_level):
                    info.append(f"field     {label}: {finding}")
                continue
            kind = "parameter" if m["where"] == request and m["prop"] in params else "property "
            gaps.append(f"{kind} {label}: {m['where']}.{m['prop']} is in the document, not in the proto")
        query = {
            specmodel.field_name(n)
            for n, p in specmodel.parameters(op, path_item).items()
            if p.get("in") == "query"
        }
        for field in protomodel.query_fields(model, rpc):
            if field not in query and not rpc.client_streaming:
                info.append(f"parameter {label}: query field '{field}' is not a parameter of the document")
    return gaps, info


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("document", type=Path, help="an OpenAI OpenAPI document (YAML or JSON)")
    parser.add_argument("--verbose", action="store_true", help="also list every presence and nested finding")
    args = parser.parse_args(argv)
    gaps, info = drift(args.document, args.verbose)
    for line in gaps:
        print(f"GAP   {line}")
    for line in info:
        print(f"info  {line}")
    covered = len(specmodel.load_endpoints())
    print(f"{covered} covered endpoints: {len(gaps)} gaps, {len(info)} informational differences")
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
