package io.mqvirtio.vhostuser;

/**
 * A run of failures of one operation a loop repeats (an accept, a connect: out of descriptors, say) and which of them
 * reach the log: the first ten of a run, then one in a thousand, so that a failure that lasts does not flood the log
 * every VM shares; and, once the operation works again after the lines stopped, how many failures the run had, for
 * one closing line. One loop's (not thread-safe).
 */
public final class FailureRun {
    private static final int LOGGED = 10, THEN_EVERY = 1000;
    /** A long: a run of ten failures a second passes 2^31 in about seven years (an int wrapped to "among the first"). */
    private long failures;

    /** Counts a failure; true if this one is to be logged. */
    public boolean failed() {
        return ++failures <= LOGGED || failures % THEN_EVERY == 0;
    }

    /** Failures in the run so far. */
    public long count() {
        return failures;
    }

    /**
     * The operation worked: the run ends. Returns how many failures it had if its lines had stopped (more than ten:
     * the log did not see them all, so the caller says that it is over), else 0.
     */
    public long succeeded() {
        long n = failures;
        failures = 0;
        return n > LOGGED ? n : 0;
    }
}
