package io.mqvirtio.net;

import java.util.concurrent.atomic.AtomicLongArray;

/**
 * One virtqueue's counters. One writer (the queue pair's worker) with release stores, any number of readers:
 * no lock and no read-modify-write on the data path.
 */
public final class QueueCounters {
    public static final int PACKETS = 0, BYTES = 1, DROPS = 2, ERRORS = 3, KICKS = 4, NOTIFICATIONS = 5;
    /** Page marks the queue's ring wrote into the frontend's dirty log (live migration). */
    public static final int DIRTY_PAGES = 6;
    private static final int N = 7;
    // Padded to its own cache lines so two workers' counters never share one.
    private final AtomicLongArray v = new AtomicLongArray(N + 16);

    void add(int field, long delta) {
        int i = field + 8;
        v.setRelease(i, v.getPlain(i) + delta);
    }

    /** A burst's counts: packets and bytes always, drops and errors only when there were any (no store for 0). */
    void addBurst(long packets, long bytes, long drops, long errors) {
        add(PACKETS, packets);
        add(BYTES, bytes);
        if (drops != 0) {
            add(DROPS, drops);
        }
        if (errors != 0) {
            add(ERRORS, errors);
        }
    }

    public long get(int field) {
        return v.getAcquire(field + 8);
    }

    public record Snapshot(long packets, long bytes, long drops, long errors, long kicks, long notifications) {}

    public Snapshot snapshot() {
        return new Snapshot(get(PACKETS), get(BYTES), get(DROPS), get(ERRORS), get(KICKS), get(NOTIFICATIONS));
    }
}
