import PMLL
import Prometheus

/// Every statistic the pool keeps, in the Prometheus text exposition format. Counters and
/// gauges go through swift-prometheus's registry; the queues' histograms are already bucketed
/// in the pool (the registry only records observations), so their series are written here,
/// in the same format.
enum PoolMetrics {
    static func exposition(of s: PoolStatus) -> String {
        let registry = PrometheusCollectorRegistry()
        let pool = ("pool", s.path)
        // Names are pmll_SUBSYSTEM_METRIC[_UNIT], split as swift-prometheus's descriptors want.
        func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
            var parts = name.split(separator: "_").map(String.init)
            let unit = ["total", "bytes", "seconds"].contains(parts.last!) ? parts.removeLast() : ""
            return MetricNameDescriptor(namespace: parts[0], subsystem: parts[1], metricName: parts[2...].joined(separator: "_"),
                                        unitName: unit, helpText: help)
        }
        func counter(_ name: String, _ help: String, _ value: UInt64, _ labels: [(String, String)] = []) {
            registry.makeCounter(descriptor: descriptor(name, help), labels: [pool] + labels).increment(by: Int64(clamping: value))
        }
        func counter(_ name: String, _ help: String, seconds: Double, _ labels: [(String, String)] = []) {
            registry.makeCounter(descriptor: descriptor(name, help), labels: [pool] + labels).increment(by: seconds)
        }
        func gauge(_ name: String, _ help: String, _ value: Double, _ labels: [(String, String)] = []) {
            registry.makeGauge(descriptor: descriptor(name, help), labels: [pool] + labels).set(value)
        }

        gauge("pmll_pool_size_bytes", "Size of the pool file.", Double(s.sizeBytes))
        gauge("pmll_pool_processes", "Processes attached to the pool.", Double(s.processes.filter(\.alive).count))
        gauge("pmll_pool_process_capacity", "Slots of the process table.", Double(s.processCapacity))
        gauge("pmll_pool_locks", "Locks in the lock table.", Double(s.locks.count))
        gauge("pmll_pool_lock_capacity", "Entries of the lock table.", Double(s.lockCapacity))
        gauge("pmll_pool_queues", "Queues in the pool.", Double(s.queues.count))
        counter("pmll_pool_volatile_resets_total", "Times the pool's volatile state was reset (nobody attached).", s.volatileResets)

        for lock in s.locks {
            let l = [("lock", lock.name), ("level", lock.level.description)]
            counter("pmll_lock_acquisitions_total", "Exclusive acquisitions.", lock.acquisitions, l)
            counter("pmll_lock_contended_total", "Exclusive acquisitions that had to wait.", lock.contended, l)
            counter("pmll_lock_timeouts_total", "Waits that timed out.", lock.timeouts, l)
            counter("pmll_lock_owner_deaths_total", "Holders that died holding the lock (or released it inconsistent).", lock.ownerDeaths, l)
            counter("pmll_lock_handoffs_total", "Releases that handed the lock to a starving waiter.", lock.handoffs, l)
            counter("pmll_lock_wait_seconds_total", "Time exclusive acquisitions waited, in all.", seconds: Double(lock.totalWaitNanoseconds) / 1e9, l)
            gauge("pmll_lock_wait_seconds_max", "Longest wait of an exclusive acquisition.", Double(lock.maxWaitNanoseconds) / 1e9, l)
            gauge("pmll_lock_held", "1 while a process holds the lock exclusively.", lock.holder == nil || lock.holder!.shared ? 0 : 1, l)
            gauge("pmll_lock_waiters", "Processes waiting for the lock.", Double(lock.waiters), l)
            gauge("pmll_lock_readers", "Shared holds counted in the lock.", Double(lock.sharedHolds), l)
            counter("pmll_lock_shared_acquisitions_total", "Shared acquisitions (modulo 2^32).", lock.shared.acquisitions, l)
            counter("pmll_lock_shared_contended_total", "Shared acquisitions that had to wait.", lock.shared.contended, l)
            counter("pmll_lock_reader_deaths_total", "Shared holds of readers that died.", lock.shared.readerDeaths, l)
            counter("pmll_lock_drains_total", "Exclusive acquisitions that waited for readers to leave.", lock.shared.drains, l)
        }

        var histograms = ""
        for queue in s.queues {
            let q = [("queue", queue.name)]
            gauge("pmll_queue_depth", "Operations submitted and not finished (including the running one).", Double(queue.pending), q)
            counter("pmll_queue_completed_total", "Operations that succeeded.", queue.completed, q)
            counter("pmll_queue_failed_total", "Operations that failed for good.", queue.failed, q)
            counter("pmll_queue_retries_total", "Retries after a failed attempt.", queue.retried, q)
            counter("pmll_queue_abandoned_total", "Operations abandoned by a process that died.", queue.abandoned, q)
            counter("pmll_queue_recovered_total", "Abandoned operations handled by recovery.", queue.recovered, q)
            histograms += histogram("pmll_queue_wait_seconds", "Time from submission to start.", queue.waitHistogram,
                                    sumSeconds: Double(queue.meanWaitNanoseconds) * Double(queue.completed + queue.failed) / 1e9,
                                    labels: [pool] + q)
            histograms += histogram("pmll_queue_run_seconds", "Time from start to finish.", queue.runHistogram,
                                    sumSeconds: Double(queue.meanRunNanoseconds) * Double(queue.completed + queue.failed) / 1e9,
                                    labels: [pool] + q)
        }

        if let store = s.store {
            gauge("pmll_store_keys", "Keys in the state store.", Double(store.keysUsed))
            gauge("pmll_store_key_capacity", "Slots of the key index.", Double(store.keyCapacity))
            gauge("pmll_store_blocks", "Value blocks in use.", Double(store.blocksUsed))
            gauge("pmll_store_block_capacity", "Value blocks in all.", Double(store.blockCount))
            gauge("pmll_store_used_bytes", "Bytes of value blocks in use.", Double(store.blocksUsed * store.blockSize))
            if store.redoLogBytes > 0 {
                // Since the log was made; commits per flush is their ratio (the group commit's gain).
                counter("pmll_store_redo_flushes_total", "Flushes of the redo log (each a durable barrier shared by the commits it covers).", store.redoFlushes)
                counter("pmll_store_redo_flushed_commits_total", "Commits made durable by those flushes.", store.redoFlushedCommits)
                counter("pmll_store_redo_flush_seconds_total", "Time spent in the redo log's flushes.", seconds: Double(store.redoFlushNanoseconds) / 1e9)
                counter("pmll_store_redo_group_wait_seconds_total", "Time flushers waited for their group before flushing.", seconds: Double(store.redoGroupWaitNanoseconds) / 1e9)
            }
        }
        if let t = s.transactions {
            counter("pmll_store_commits_total", "Transactions that committed changes.", t.commits)
            counter("pmll_store_conflicts_total", "Serializable transactions that met a changed read.", t.conflicts)
            counter("pmll_store_retries_total", "Transaction bodies run again after a conflict.", t.retries)
            counter("pmll_store_rollbacks_total", "Interrupted commits rolled back.", t.rollbacks)
        }
        if let c = s.lastCheck {
            counter("pmll_check_runs_total", "Scheduled consistency checks run on the pool.", c.runs)
            counter("pmll_check_failures_total", "Scheduled checks that found problems.", c.failures)
            gauge("pmll_check_last_success", "1 if the last scheduled check found no problem.", c.ok ? 1 : 0)
            gauge("pmll_check_last_timestamp_seconds", "When the last scheduled check finished (seconds since 1970).", Double(c.finishedAtNanoseconds) / 1e9)
            gauge("pmll_check_last_duration_seconds", "How long the last scheduled check took.", Double(c.durationNanoseconds) / 1e9)
        }
        if let b = s.lastBackup {
            counter("pmll_backup_runs_total", "Scheduled backups attempted.", b.runs)
            counter("pmll_backup_failures_total", "Scheduled backups that failed.", b.failures)
            gauge("pmll_backup_last_success", "1 if the last scheduled backup was written.", b.ok ? 1 : 0)
            gauge("pmll_backup_last_timestamp_seconds", "When the last scheduled backup finished (seconds since 1970).", Double(b.finishedAtNanoseconds) / 1e9)
            gauge("pmll_backup_last_writers_blocked_seconds", "How long the last scheduled backup held writers off.", Double(b.writersBlockedNanoseconds) / 1e9)
        }
        return registry.emitToString() + histograms
    }

    /// A histogram whose bucket i counts values in [2^i, 2^(i+1)) µs (bucket 0 also counts
    /// everything under 1 µs; the last one everything above): cumulative `le` buckets in
    /// seconds, the last one only in +Inf.
    static func histogram(_ name: String, _ help: String, _ buckets: [UInt64], sumSeconds: Double, labels: [(String, String)]) -> String {
        let base = labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",")
        var out = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        var cumulative: UInt64 = 0
        for (i, count) in buckets.enumerated() {
            cumulative &+= count
            guard i < buckets.count - 1 else { break }
            let le = Double(UInt64(1) << (i + 1)) / 1e6
            out += "\(name)_bucket{\(base),le=\"\(le)\"} \(cumulative)\n"
        }
        out += "\(name)_bucket{\(base),le=\"+Inf\"} \(cumulative)\n"
        out += "\(name)_sum{\(base)} \(sumSeconds)\n"
        out += "\(name)_count{\(base)} \(cumulative)\n"
        return out
    }

    /// Label values as the text format wants them: backslash, quote and newline escaped.
    static func escape(_ value: String) -> String {
        var out = ""
        for c in value {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }
}
