#!/usr/bin/env bash
# Single-stream iperf3 between two network namespaces, all in the same run:
#   1. the raw veth (the ceiling),
#   2. Debian's wireguard-go (the baseline),
#   3. Shoal's tun mesh (shoal-mesh-node --mode tun, boringtun),
# then prints the throughputs and the ratios. Target (issue 4): shoal >= 2 x wireguard-go.
# Needs root (namespaces, TUN). Everything it creates is removed on exit, also on failure.
#
#   ops/bench-mesh.sh                 # 10 s per measurement
#   DURATION=5 ops/bench-mesh.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-mesh: needs root (network namespaces and TUN devices)" >&2
  exit 1
fi
for tool in ip iperf3 wg wireguard-go ping; do
  command -v "$tool" >/dev/null || { echo "bench-mesh: $tool missing (run ops/install-deps.sh)" >&2; exit 1; }
done

duration="${DURATION:-10}"
node_bin="${SHOAL_MESH_NODE:-target/release/shoal-mesh-node}"
if [ -z "${SHOAL_MESH_NODE:-}" ]; then
  cargo build --release --locked -p shoal-mesh --bin shoal-mesh-node >&2
fi

ns_a="shbench-a-$$"
ns_b="shbench-b-$$"
work="$(mktemp -d)"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  ip netns del "$ns_a" 2>/dev/null || true
  ip netns del "$ns_b" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns_a"
ip netns add "$ns_b"
ip -n "$ns_a" link set lo up
ip -n "$ns_b" link set lo up
ip -n "$ns_a" link add va type veth peer name vb netns "$ns_b"
ip -n "$ns_a" addr add 10.98.0.1/24 dev va
ip -n "$ns_b" addr add 10.98.0.2/24 dev vb
ip -n "$ns_a" link set va up
ip -n "$ns_b" link set vb up

wait_ping() { # ns addr
  for _ in $(seq 1 100); do
    ip netns exec "$1" ping -c 1 -W 1 "$2" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench-mesh: $2 unreachable from $1" >&2
  return 1
}

# Prints the receiver's throughput in Mbit/s of a single-stream iperf3 from ns a to $1.
measure() {
  ip netns exec "$ns_b" iperf3 -s -1 -B "$1" >/dev/null 2>&1 &
  local server=$!
  sleep 0.5
  ip netns exec "$ns_a" iperf3 -c "$1" -P 1 -t "$duration" -f m \
    | awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1) }'
  wait "$server" 2>/dev/null || true
}

echo "--- raw veth" >&2
veth_mbps="$(measure 10.98.0.2)"

echo "--- wireguard-go" >&2
wg genkey > "$work/wg-a.key"
wg genkey > "$work/wg-b.key"
for side in a b; do
  ns_var="ns_$side"
  ip netns exec "${!ns_var}" env WG_PROCESS_FOREGROUND=1 wireguard-go "shbwg$side" >/dev/null 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 100); do
  [ -S /var/run/wireguard/shbwga.sock ] && [ -S /var/run/wireguard/shbwgb.sock ] && break
  sleep 0.05
done
ip netns exec "$ns_a" wg set shbwga private-key "$work/wg-a.key" listen-port 51830 \
  peer "$(wg pubkey < "$work/wg-b.key")" endpoint 10.98.0.2:51830 allowed-ips 10.78.0.2/32
ip netns exec "$ns_b" wg set shbwgb private-key "$work/wg-b.key" listen-port 51830 \
  peer "$(wg pubkey < "$work/wg-a.key")" endpoint 10.98.0.1:51830 allowed-ips 10.78.0.1/32
ip -n "$ns_a" addr add 10.78.0.1/24 dev shbwga
ip -n "$ns_b" addr add 10.78.0.2/24 dev shbwgb
ip -n "$ns_a" link set shbwga mtu 1420 up
ip -n "$ns_b" link set shbwgb mtu 1420 up
wait_ping "$ns_a" 10.78.0.2
wggo_mbps="$(measure 10.78.0.2)"

echo "--- shoal tun mesh" >&2
key_a="$("$node_bin" --data-dir "$work/shoal-a" --print-public-key)"
key_b="$("$node_bin" --data-dir "$work/shoal-b" --print-public-key)"
ip netns exec "$ns_a" "$node_bin" --data-dir "$work/shoal-a" --listen 10.98.0.1:51820 \
  --mesh-addr 10.77.0.1 --mode tun --ifname shbsh0 --peer "$key_b,10.98.0.2:51820,10.77.0.2" \
  >/dev/null 2>"$work/shoal-a.log" &
pids+=($!)
ip netns exec "$ns_b" "$node_bin" --data-dir "$work/shoal-b" --listen 10.98.0.2:51820 \
  --mesh-addr 10.77.0.2 --mode tun --ifname shbsh1 --peer "$key_a,10.98.0.1:51820,10.77.0.1" \
  >/dev/null 2>"$work/shoal-b.log" &
pids+=($!)
wait_ping "$ns_a" 10.77.0.2
shoal_mbps="$(measure 10.77.0.2)"

awk -v veth="$veth_mbps" -v wggo="$wggo_mbps" -v shoal="$shoal_mbps" -v d="$duration" 'BEGIN {
  printf "single-stream iperf3, %s s each, same run, between two namespaces over a veth\n", d
  printf "  raw veth        %8.2f Gbit/s\n", veth / 1000
  printf "  wireguard-go    %8.2f Gbit/s\n", wggo / 1000
  printf "  shoal tun mesh  %8.2f Gbit/s\n", shoal / 1000
  printf "  shoal / wireguard-go = %.2f (target >= 2.00); shoal / veth = %.3f\n", shoal / wggo, shoal / veth
}'
