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
     * Not a code path: while on, the bench's driver has the backend under test log every page it writes, as QEMU
     * has it while migrating a VM (NetDriver.setDirtyLog): what dirty logging costs per packet, against our backend
     * (scenario 1) or DPDK's vhost (scenario 4). Scenarios whose frontend is not our driver refuse it.
     */
    DIRTY_LOG(false),

    /**
     * A TAP backend whose TX goes through io_uring (TapBackend.TxMethod) writes with one writev(2) per frame while
     * this is on, read by the port once per TX burst: io_uring against writev with paired windows (scenario 5).
     */
    TAP_WRITEV(false),

    /**
     * The TAP's io_uring writer links every batch's writes (IOSQE_IO_LINK) while this is on, as it does from the start
     * on a TAP whose send buffer a host limited, or once a write found no room: what the links cost, with paired
     * windows (scenario 5).
     */
    TAP_URING_LINKED(false);

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
