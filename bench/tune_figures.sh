#!/usr/bin/env bash
# The README's figures for recipe searches, seeds and ensembles (docs/tuning.md), each step one mnist-tune or
# mnist-eval command as a user would type it:
#   1. a 24-trial search for cnn, 3 epochs a trial, on this machine's threads (SQLite), with its picture;
#   2. cnn's default recipe at the same budget (one seed, the search's), scored on the same validation split;
#   3. the same search with two workers (two processes, as two hosts would run it) sharing a local PostgreSQL;
#   4. cnn's full recipe over 5 seeds, measured on the test set, and the 5 models as one ensemble;
#   5. cnn's full recipe on all training images (mnist-train, the README's single cnn) with 5 seeds, and their
#      ensemble;
#   6. (--best) best's full recipe over 3 seeds, and their ensemble;
#   7. (--ensemble A.gguf B.gguf ...) any models of yours evaluated as one ensemble.
#
# usage: bench/tune_figures.sh [--data-dir DIR] [--out DIR] [--threads N] [--steps 1,2,3,4,5] [--best]
#                              [--ensemble MODEL.gguf ...]
#   --data-dir DIR  the folder that holds mnist/ (default: $GGML_MNIST_DATA/.. or data)
#   --out DIR       where the studies, models and logs go (default: ${TMPDIR:-/tmp}/ggml-mnist-tune-figures)
#   --threads N     CPU threads in all (default: 2)
#   --steps LIST    which of steps 1-5 to run (default: all five)
# Step 3 starts a private PostgreSQL cluster on 127.0.0.1 (Debian's postgresql package; as root, it runs as the
# postgres user) in OUT/pg and stops it at the end; without initdb it is skipped with a line saying so.
set -euo pipefail

data_dir="${GGML_MNIST_DATA:+$(dirname "$GGML_MNIST_DATA")}"; data_dir="${data_dir:-data}"
out="${TMPDIR:-/tmp}/ggml-mnist-tune-figures"; threads=2; steps="1,2,3,4,5"; best=0; ensemble=()
while [ $# -gt 0 ]; do
    case "$1" in
        --data-dir) data_dir="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --threads) threads="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --best) best=1; shift ;;
        --ensemble) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do ensemble+=("$1"); shift; done ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "tune_figures.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$out"
say() { printf '[tune_figures %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
step() { case ",$steps," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
timed() { local t0=$SECONDS; "$@"; say "took $((SECONDS - t0)) s: $*"; }
common=(--data-dir "$data_dir" --threads "$threads")

if step 1; then
    say "1. a 24-trial search for cnn, 3 epochs a trial"
    timed mnist-tune cnn --trials 24 --epochs 3 "${common[@]}" --study cnn-search --dir "$out/cnn-search" \
        --quiet | tee "$out/cnn-search.txt"
    mnist-tune --study cnn-search --dir "$out/cnn-search" --plot "$out/cnn-search.png" --json > "$out/cnn-search.json"
fi
if step 2; then
    say "2. cnn's default recipe at the same budget, on the same validation split"
    timed mnist-tune cnn --seeds 1 --epochs 3 "${common[@]}" --study cnn-default --dir "$out/cnn-default" \
        --quiet | tee "$out/cnn-default.txt"
fi
if step 3; then
    pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -z "$pgbin" ] || [ ! -x "$pgbin/initdb" ]; then
        say "3. skipped: PostgreSQL's initdb is missing (apt-get install postgresql)"
    else
        say "3. the same search, two workers sharing a local PostgreSQL"
        pg="$out/pg"; rm -rf "$pg"; mkdir -p "$pg"
        as=(); if [ "$(id -u)" = 0 ]; then chown postgres "$pg"; as=(runuser -u postgres --); fi
        port=$((20000 + RANDOM % 20000))
        echo "admin-pw" > "$pg/pw"; [ ${#as[@]} -eq 0 ] || chown postgres "$pg/pw"
        "${as[@]}" "$pgbin/initdb" -D "$pg/data" -U admin --pwfile "$pg/pw" -A scram-sha-256 --no-sync > "$pg/initdb.log"
        trap '"${as[@]}" "$pgbin/pg_ctl" -D "$pg/data" -m fast -w stop > /dev/null 2>&1 || true' EXIT
        "${as[@]}" "$pgbin/pg_ctl" -D "$pg/data" -l "$pg/log" -w -o "-p $port -k '$pg' -c listen_addresses=127.0.0.1" \
            start > /dev/null
        "$(command -v python || command -v python3)" - "$port" <<'EOF'
import sys, psycopg
with psycopg.connect(f"postgresql://admin:admin-pw@127.0.0.1:{sys.argv[1]}/postgres", autocommit=True) as db:
    db.execute("CREATE ROLE tuner LOGIN PASSWORD 'tuner-pw'")
    db.execute("CREATE DATABASE tune OWNER tuner")
EOF
        url="postgresql://tuner:tuner-pw@127.0.0.1:$port/tune"
        t0=$SECONDS; pids=()
        for host in a b; do  # one worker a host, each with its share of the threads
            mnist-tune cnn --trials 24 --epochs 3 --data-dir "$data_dir" --threads $(( threads > 1 ? threads / 2 : 1 )) \
                --storage "$url" --study cnn-shared --dir "$out/cnn-shared-$host" --quiet > "$out/cnn-shared-$host.txt" 2>&1 &
            pids+=("$!")
        done
        for pid in "${pids[@]}"; do
            wait "$pid" || { echo "tune_figures.sh: a worker failed; see $out/cnn-shared-*.txt" >&2; exit 1; }
        done
        say "took $((SECONDS - t0)) s: two mnist-tune cnn --trials 24 --epochs 3 --storage postgresql://... side by side"
        mnist-tune --show --study cnn-shared --storage "$url" --dir "$out/cnn-shared-a" | tee "$out/cnn-shared.txt"
    fi
fi
if step 4; then
    say "4. cnn's full recipe over 5 seeds, on the test set, and their ensemble"
    timed mnist-tune cnn --seeds 5 --test "${common[@]}" --study cnn-seeds --dir "$out/cnn-seeds" --quiet \
        | tee "$out/cnn-seeds.txt"
    mnist-eval "$out"/cnn-seeds/trials/*.gguf --data-dir "$data_dir" | tee "$out/cnn-ensemble.txt"
fi
if step 5; then
    say "5. cnn's full recipe on all training images, 5 seeds, and their ensemble"
    mkdir -p "$out/cnn-full"
    t0=$SECONDS
    for seed in 42 43 44 45 46; do
        mnist-train cnn "$out/cnn-full/cnn-$seed.gguf" --seed "$seed" "${common[@]}" --quiet
        mnist-eval "$out/cnn-full/cnn-$seed.gguf" --data-dir "$data_dir" | tee "$out/cnn-full/cnn-$seed.txt"
    done
    say "took $((SECONDS - t0)) s: mnist-train cnn OUT --seed S for S in 42 .. 46 (and mnist-eval of each)"
    mnist-eval "$out"/cnn-full/cnn-*.gguf --data-dir "$data_dir" | tee "$out/cnn-full-ensemble.txt"
fi
if [ "$best" = 1 ]; then
    say "6. best's full recipe over 3 seeds, on the test set, and their ensemble"
    timed mnist-tune best --seeds 3 --test "${common[@]}" --study best-seeds --dir "$out/best-seeds" --quiet \
        | tee "$out/best-seeds.txt"
    mnist-eval "$out"/best-seeds/trials/*.gguf --data-dir "$data_dir" | tee "$out/best-ensemble.txt"
fi
if [ ${#ensemble[@]} -gt 0 ]; then
    say "7. ${#ensemble[@]} models as one ensemble"
    mnist-eval "${ensemble[@]}" --data-dir "$data_dir" | tee "$out/ensemble.txt"
fi
say "done: $out"
