package io.mqvirtio.memory;

import java.lang.invoke.VarHandle;

/**
 * One writer's pending dirty bits (DPDK's vhost_log_cache): pages marked while a burst writes guest memory are
 * gathered here, a few 64-bit words of the bitmap, and ORed into the shared {@link DirtyLog} in one go by
 * {@link #flush()}, after a release fence, so that a bit never becomes visible before the write it stands for (the
 * frontend clears a bit, copies the page, and must see the bit again for any write that follows). Single-threaded.
 *
 * <p>Without a log ({@link #setLog(DirtyLog) null}) marking costs one branch.
 */
public final class DirtyLogCache {
    private static final int ENTRIES = 32;
    private final long[] word = new long[ENTRIES];
    private final long[] mask = new long[ENTRIES];
    private int n;
    private DirtyLog log;
    private long logged;

    /** Logs into {@code next} from now on (null: stop logging); what was pending goes to the previous log first. */
    public void setLog(DirtyLog next) {
        flush();
        log = next;
    }

    public boolean isLogging() {
        return log != null;
    }

    /** Marks the pages of guest-physical bytes {@code gpa..gpa+len-1} dirty (visible after {@link #flush()}). */
    public void mark(long gpa, long len) {
        if (log == null || len <= 0) {
            return;
        }
        long first = Long.divideUnsigned(gpa, DirtyLog.PAGE);
        long last = Long.divideUnsigned(gpa + len - 1, DirtyLog.PAGE);
        if (Long.compareUnsigned(gpa + len - 1, gpa) < 0) {
            last = Long.divideUnsigned(-1L, DirtyLog.PAGE); // wraps: up to the top of the address space
        }
        for (long p = first; p <= last; p++) { // page numbers have 52 bits: no overflow
            markPage(p);
        }
    }

    private void markPage(long page) {
        long w = page >>> 6;
        long bit = 1L << (page & 63);
        for (int i = 0; i < n; i++) {
            if (word[i] == w) {
                mask[i] |= bit;
                return;
            }
        }
        if (n == ENTRIES) {
            flush();
        }
        word[n] = w;
        mask[n] = bit;
        n++;
    }

    /** Writes the pending bits into the log, after every guest-memory write before this call. */
    public void flush() {
        if (n == 0) {
            return;
        }
        VarHandle.releaseFence();
        DirtyLog l = log;
        for (int i = 0; i < n; i++) {
            if (l.or(word[i], mask[i])) {
                logged += Long.bitCount(mask[i]);
            }
        }
        n = 0;
    }

    /** Page marks written into logs so far (a page marked in two flushes counts twice). */
    public long pagesLogged() {
        return logged;
    }
}
