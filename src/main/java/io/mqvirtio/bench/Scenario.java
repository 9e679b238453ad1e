package io.mqvirtio.bench;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.stream.Collectors;

/** The scenarios of {@code mqvirtio bench}: who sends, who receives. Scenario 3 is the reference. */
public enum Scenario {
    OURS_TO_OURS(1, "ours->ours", "our driver -> our backend (sink)", false, false),
    DPDK_TO_OURS(2, "dpdk->ours", "DPDK virtio-user (testpmd txonly) -> our backend (sink)", true, false),
    DPDK_TO_DPDK(3, "dpdk->dpdk", "DPDK virtio-user (testpmd txonly) -> DPDK vhost (testpmd rxonly): the reference", true, false),
    OURS_TO_DPDK(4, "ours->dpdk", "our driver -> DPDK vhost (testpmd rxonly)", true, false),
    OURS_TO_TAP(5, "ours->tap", "our driver -> our backend -> multiqueue TAP in a namespace (the kernel drops)", false, true),
    TAP_TO_OURS(6, "tap->ours", "host sender (packet sockets, sendmmsg) -> multiqueue TAP -> our backend -> our driver", false, true),
    WRITEV_TO_TAP(7, "writev->tap", "syscall-bound reference of 5: one writev per frame on each TAP queue fd, nothing else", false, true),
    TAP_TO_READV(8, "tap->readv", "syscall-bound reference of 6: host sender as in 6, one readv per frame from each TAP queue fd", false, true),
    URING_TO_TAP(9, "uring->tap", "batched writes past the syscall bound: 32 IORING_OP_WRITE_FIXED (registered file and buffer) per io_uring_enter on each TAP queue fd, against 7", false, true),
    TAP_TO_URING(10, "tap->uring", "batched reads: host sender as in 6, up to 32 IORING_OP_READ_FIXED with RWF_NOWAIT (registered file and buffer) per io_uring_enter on each TAP queue fd, as many as the queue held last time, against 8", false, true),
    TAP_TO_READV_RING(11, "tap->readv-ring", "8 with 6's memory traffic: one readv per frame into the next of 256 buffers, which a thread on the driver's CPU copies out before they are read into again, against 8", false, true);

    /** The scenario the virtio ones are compared with, at the same frame size and queue pairs. */
    public static final Scenario REFERENCE = DPDK_TO_DPDK;

    private final int id;
    private final String label;
    private final String description;
    private final boolean needsDpdk;
    private final boolean needsRoot;

    Scenario(int id, String label, String description, boolean needsDpdk, boolean needsRoot) {
        this.id = id;
        this.label = label;
        this.description = description;
        this.needsDpdk = needsDpdk;
        this.needsRoot = needsRoot;
    }

    public int id() {
        return id;
    }

    /** Short name, e.g. "dpdk->ours". */
    public String label() {
        return label;
    }

    /** "2 dpdk->ours". */
    public String title() {
        return id + " " + label;
    }

    public String description() {
        return description;
    }

    public boolean needsDpdk() {
        return needsDpdk;
    }

    public boolean needsRoot() {
        return needsRoot;
    }

    /**
     * What this scenario's rate is compared with (its "vs ref" columns): the TAP scenarios with the syscall-bound
     * loop of the same direction (how close the data path comes to the kernel's own cost), the rest with DPDK to
     * DPDK (scenario 3); a reference with itself.
     */
    public Scenario reference() {
        return switch (this) {
            case OURS_TO_TAP, WRITEV_TO_TAP, URING_TO_TAP -> WRITEV_TO_TAP;
            case TAP_TO_OURS, TAP_TO_READV, TAP_TO_URING, TAP_TO_READV_RING -> TAP_TO_READV;
            default -> REFERENCE;
        };
    }

    /** Whether this scenario is a reference of others. */
    public boolean isReference() {
        return reference() == this;
    }

    public static Scenario byId(int id) {
        for (Scenario s : values()) {
            if (s.id == id) {
                return s;
            }
        }
        throw new IllegalArgumentException("no scenario " + id + " (there are 1.." + values().length + ")");
    }

    /** "1,2,4" or "all" (also accepts labels such as "dpdk->dpdk"). */
    public static List<Scenario> parseList(String text) {
        List<Scenario> out = new ArrayList<>();
        if (text.trim().equals("all")) {
            return List.of(values());
        }
        for (String p : text.split(",")) {
            String t = p.trim();
            Scenario found = null;
            for (Scenario s : values()) {
                if (s.label.equals(t) || String.valueOf(s.id).equals(t)) {
                    found = s;
                }
            }
            if (found == null) {
                throw new IllegalArgumentException("unknown scenario '" + t + "': use 1.." + values().length
                        + " or all (" + Arrays.stream(values()).map(Scenario::title).collect(Collectors.joining(", "))
                        + ")");
            }
            if (!out.contains(found)) {
                out.add(found);
            }
        }
        return out;
    }
}
