# Who leads now, as the running servers see it. Sourced by redis.sh and sentinel.sh, which
# ask this before they start, so that a restarted pod joins the topology the sentinels
# have moved to instead of the one its manifest started with.
#
# The topology: every address is a StatefulSet pod's name under its headless Service
# (POD.SERVICE, resolvable in the namespace). Scaling a StatefulSet means adding its pods
# here; a pod missing from these lists refuses to start (see address_of).
MASTER_NAME=guestbook
INITIAL_LEADER=redis-leader-0.redis-leader-headless
NODES="redis-leader-0.redis-leader-headless redis-follower-0.redis-follower-headless redis-follower-1.redis-follower-headless"
SENTINELS="redis-sentinel-0.redis-sentinel redis-sentinel-1.redis-sentinel redis-sentinel-2.redis-sentinel"

# address_of POD ADDRESS...: the address that names POD.
address_of() {
    _pod=$1
    shift
    for _address in "$@"; do
        case $_address in "$_pod".*) printf '%s' "$_address" && return 0 ;; esac
    done
    echo "redis-ha: $_pod is not in discover.sh's topology; add it there when scaling" >&2
    return 1
}

# A key's value in a `valkey-cli --raw` map reply (keys on odd lines, values after them).
reply_field() {
    awk -v key="$1" 'NR % 2 == 1 && $0 == key { getline; print; exit }'
}

# The leader that the answering sentinels name. Each failover raises the configuration
# epoch, so when they disagree (one just restarted, one was cut off) the highest epoch has
# seen the latest failover.
leader_from_sentinels() {
    _best=
    _best_epoch=-1
    for _sentinel in $SENTINELS; do
        [ "$_sentinel" = "$1" ] && continue
        _reply=$(timeout 2 valkey-cli --raw -h "$_sentinel" -p 26379 sentinel master "$MASTER_NAME" 2>/dev/null) || continue
        _host=$(printf '%s\n' "$_reply" | reply_field ip)
        _epoch=$(printf '%s\n' "$_reply" | reply_field config-epoch)
        case $_epoch in '' | *[!0-9]*) continue ;; esac
        if [ -n "$_host" ] && [ "$_epoch" -gt "$_best_epoch" ]; then
            _best=$_host
            _best_epoch=$_epoch
        fi
    done
    printf '%s' "$_best"
}

# With no sentinel answering (all restarted at once): the data node that reports
# role:master with the most followers attached.
leader_from_nodes() {
    _best=
    _best_replicas=-1
    for _node in $NODES; do
        [ "$_node" = "$1" ] && continue
        _info=$(timeout 2 valkey-cli -h "$_node" -p 6379 info replication 2>/dev/null | tr -d '\r')
        case $_info in *role:master*) ;; *) continue ;; esac
        _replicas=$(printf '%s\n' "$_info" | sed -n 's/^connected_slaves://p')
        case $_replicas in '' | *[!0-9]*) _replicas=0 ;; esac
        if [ "$_replicas" -gt "$_best_replicas" ]; then
            _best=$_node
            _best_replicas=$_replicas
        fi
    done
    printf '%s' "$_best"
}

# current_leader SELF: the current leader's address, asking everyone but SELF; empty when
# nobody answers (a new installation).
current_leader() {
    _leader=$(leader_from_sentinels "$1")
    [ -n "$_leader" ] || _leader=$(leader_from_nodes "$1")
    printf '%s' "$_leader"
}
