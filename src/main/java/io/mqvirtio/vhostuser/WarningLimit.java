package io.mqvirtio.vhostuser;

import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.util.Arrays;
import java.util.function.LongSupplier;

/**
 * How many warnings about a frontend's misbehaviour reach the log: at most {@code burst} per window, then a count of
 * what was left out when the window ends. One per socket (per VM), shared by its sessions, so a frontend that
 * reconnects in a loop does not get a fresh allowance with each connection, and one VM's flood does not hide another
 * VM's warnings. Thread-safe (a new session may warn while the old one's teardown still does).
 */
final class WarningLimit {
    /** Warnings logged in full per window; the rest are counted. */
    static final int BURST = 100;
    static final long WINDOW_NANOS = 60_000_000_000L;

    private final String source;
    private final int burst;
    private final long windowNanos;
    private final LongSupplier clock;
    private long windowStart;
    private long inWindow;   // warnings in this window, logged or not
    private long total;

    WarningLimit(String source) {
        this(source, BURST, WINDOW_NANOS, System::nanoTime);
    }

    WarningLimit(String source, int burst, long windowNanos, LongSupplier clock) {
        this.source = source;
        this.burst = burst;
        this.windowNanos = windowNanos;
        this.clock = clock;
        this.windowStart = clock.getAsLong();
    }

    /** Logs {@code format} with {@code args} at WARNING if the allowance has room; counts it otherwise. */
    synchronized void warn(Logger log, String format, Object... args) {
        long now = clock.getAsLong();
        total++;
        if (now - windowStart >= windowNanos) {
            if (inWindow > burst) {
                log.log(Level.WARNING, "{0}: {1} warnings about the frontend were not logged in the last {2} s "
                        + "({3} in all)", source, inWindow - burst, (now - windowStart) / 1_000_000_000L, total - 1);
            }
            windowStart = now;
            inWindow = 0;
        }
        if (++inWindow <= burst) {
            if (inWindow == burst) {
                log.log(Level.WARNING, format + " (the last warning about this frontend logged for up to {"
                        + args.length + "} s; the rest are counted)", append(args, windowNanos / 1_000_000_000L));
            } else {
                log.log(Level.WARNING, format, args);
            }
        }
    }

    synchronized long total() {
        return total;
    }

    private static Object[] append(Object[] a, Object x) {
        Object[] r = Arrays.copyOf(a, a.length + 1);
        r[a.length] = x;
        return r;
    }
}
