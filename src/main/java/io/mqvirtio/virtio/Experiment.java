package io.mqvirtio.virtio;

import java.util.Arrays;
import java.util.Locale;
import java.util.stream.Collectors;

/**
 * A change to the data path under measurement, which the bench turns on and off while traffic runs
 * ({@code mqvirtio bench --ab NAME}): on this machine only windows side by side in one run can show a 10 % effect
 * (docs/performance.md, "Paired windows"). Each constant is read where its change is made, once per burst or per
 * pop (a plain load); its default is what the code does when nobody measures. A change that is proven and kept
 * loses its constant; one that did not help is removed with it.
 */
public enum Experiment {
    /**
     * The device's split ring reads ahead the first line of every frame of a burst, not only of those of 256 bytes
     * or more (what its packed ring does: there it bought 1.54x at 64 B, DPDK virtio-user into our copying sink).
     * On the split ring it cost 5 % at 64 B (0.950, quartiles 0.827-0.973, CPUs 153 ns apart) and nothing at 1500 B;
     * kept as an experiment to measure again when the CPUs are far apart, where a split ring's serial misses cost most.
     */
    SPLIT_READ_AHEAD_SHORT(false),

    /**
     * A TX burst reads ahead without first asking the ring how many chains wait ({@code available()}: on a packed
     * ring, a pass over up to 64 descriptors' flags before read-ahead makes its own). Paired windows, copying sink:
     * split 64 B 1.040 (0.990-1.069) but 1500 B 0.960 (0.895-0.998); packed 64 B 1.060 (0.985-1.086), 1500 B 1.011:
     * within noise where it gains, a loss at 1500 B split, so off.
     */
    READ_AHEAD_UNASKED(false),

    /**
     * The packed ring's read-ahead first loads one byte of each descriptor line of the burst (a tight loop whose loads
     * depend on nothing, so a whole burst's lines are in flight at once), then reads the descriptors and touches the
     * frames. Without it, each line's load waits in a loop whose body (flags check, region lookup, frame touch) fills
     * the CPU's instruction window after a few descriptors.
     */
    PACKED_READ_AHEAD_LINES(false),

    /**
     * Split rings: a field is stored only when it changes (the driver's descriptors and avail slots, the device's used
     * entries), and our driver hands out TX buffers first in, first out, so that under IN_ORDER slot k always goes
     * with descriptor k. A TX lap then writes the same descriptors, avail slots and used entries as the last: those
     * lines stay shared in both CPUs' caches instead of moving to the writer and back to the reader each lap; only
     * the indexes and the frames travel.
     */
    KEEP_UNCHANGED(false);

    private volatile boolean on;
    private final boolean byDefault;

    Experiment(boolean byDefault) {
        this.byDefault = byDefault;
        this.on = byDefault;
    }

    public boolean on() {
        return on;
    }

    public void set(boolean on) {
        this.on = on;
    }

    /** Back to what the code does when nobody measures. */
    public void reset() {
        on = byDefault;
    }

    /** The constant called {@code name} (any case, - or _), or an IllegalArgumentException naming those there are. */
    public static Experiment named(String name) {
        String n = name.trim().toUpperCase(Locale.ROOT).replace('-', '_');
        for (Experiment e : values()) {
            if (e.name().equals(n)) {
                return e;
            }
        }
        throw new IllegalArgumentException("no experiment '" + name + "'; there are: " + names());
    }

    public static String names() {
        return Arrays.stream(values()).map(e -> e.name().toLowerCase(Locale.ROOT).replace('_', '-'))
                .collect(Collectors.joining(", "));
    }
}
