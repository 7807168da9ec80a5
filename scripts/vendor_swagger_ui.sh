#!/usr/bin/env bash
# Vendors the Swagger UI files that `GET /docs` serves from the binary: fetches the pinned
# swagger-ui-dist from the npm registry (`npm pack`, which checks the tarball against the
# registry's integrity hash), copies the two files the page needs and its licence into
# crates/server/assets/swagger-ui/, and records their sha256 sums in SHA256SUMS. A unit test
# (crates/server/src/http/docs.rs) checks the embedded bytes against SHA256SUMS.
# Run it only to move to another version: change VERSION, run, commit the folder.
set -euo pipefail
VERSION=5.35.0
cd "$(dirname "$0")/.."
DEST=crates/server/assets/swagger-ui
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack --silent "swagger-ui-dist@$VERSION" >/dev/null && tar xzf "swagger-ui-dist-$VERSION.tgz")
mkdir -p "$DEST"
for file in swagger-ui-bundle.js swagger-ui.css LICENSE; do
    cp "$WORK/package/$file" "$DEST/$file"
done
echo "$VERSION" > "$DEST/VERSION"
(cd "$DEST" && sha256sum swagger-ui-bundle.js swagger-ui.css LICENSE > SHA256SUMS)
cat "$DEST/SHA256SUMS"
