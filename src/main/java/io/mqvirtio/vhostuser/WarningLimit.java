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
 *
 * <p>The same bound, at INFO and with its own allowance ({@link #notices}), holds the lines a frontend's ordinary
 * requests log (connected, features, memory table, ring started, enabled, stopped, MTU, RARP, reset, closed): each of
 * those requests can be sent in a loop, or the connection remade in one, and the log is every VM's.
 *
 * <p>A device has one of its own for what its workers log about the rings (a ring broken, a parked frame lost):
 * a frontend can break a ring, restart it and break it again in a loop, one line each time.
 */
public final class WarningLimit {
    /** Warnings logged in full per window; the rest are counted. */
    static final int BURST = 100;
    static final long WINDOW_NANOS = 60_000_000_000L;
    /**
     * Notices per window for a device of no rings; each ring adds {@link #NOTICES_PER_RING}: room for a frontend
     * that starts every ring, restarts them (a guest reboot) and migrates within one window, and for a flood's lines
     * at most about one every 60 ms.
     */
    static final int NOTICES = 1000;
    static final int NOTICES_PER_RING = 8;

    private final String source;
    private final Level level;
    private final String what; // "warning" or "notice", in the lines about those left out
    private final int burst;
    private final long windowNanos;
    private final LongSupplier clock;
    private long windowStart;
    private long inWindow;   // warnings in this window, logged or not
    private long total;

    /** {@link #BURST} warnings a minute about what the frontend (or its guest) of {@code source} did. */
    public WarningLimit(String source) {
        this(source, BURST, WINDOW_NANOS, System::nanoTime);
    }

    WarningLimit(String source, int burst, long windowNanos, LongSupplier clock) {
        this(source, Level.WARNING, "warning", burst, windowNanos, clock);
    }

    private WarningLimit(String source, Level level, String what, int burst, long windowNanos, LongSupplier clock) {
        this.source = source;
        this.level = level;
        this.what = what;
        this.burst = burst;
        this.windowNanos = windowNanos;
        this.clock = clock;
        this.windowStart = clock.getAsLong();
    }

    /** The allowance, at INFO, for the ordinary lines of the sessions of a socket whose device has {@code rings}. */
    static WarningLimit notices(String source, int rings) {
        return notices(source, NOTICES + NOTICES_PER_RING * rings, WINDOW_NANOS, System::nanoTime);
    }

    static WarningLimit notices(String source, int burst, long windowNanos, LongSupplier clock) {
        return new WarningLimit(source, Level.INFO, "notice", burst, windowNanos, clock);
    }

    /** Logs {@code format} with {@code args} (at WARNING, or INFO for notices) if the allowance has room; counts it otherwise. */
    public synchronized void warn(Logger log, String format, Object... args) {
        long now = clock.getAsLong();
        total++;
        if (now - windowStart >= windowNanos) {
            if (inWindow > burst) {
                log.log(level, "{0}: {1} {2}s about the frontend were not logged in the last {3} s ({4} in all)", source,
                        inWindow - burst, what, (now - windowStart) / 1_000_000_000L, total - 1);
            }
            windowStart = now;
            inWindow = 0;
        }
        if (++inWindow <= burst) {
            if (inWindow == burst) {
                log.log(level, format + " (the last " + what + " about this frontend logged for up to {"
                        + args.length + "} s; the rest are counted)", append(args, windowNanos / 1_000_000_000L));
            } else {
                log.log(level, format, args);
            }
        }
    }

    /** Warnings asked for so far, logged or not. */
    public synchronized long total() {
        return total;
    }

    private static Object[] append(Object[] a, Object x) {
        Object[] r = Arrays.copyOf(a, a.length + 1);
        r[a.length] = x;
        return r;
    }
}
