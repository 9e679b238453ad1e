package io.mqvirtio.virtio;

/** Device-independent feature bits (VIRTIO 1.3, 6 "Reserved Feature Bits") and helpers over a feature word. */
public final class VirtioFeatures {
    public static final int F_NOTIFY_ON_EMPTY = 24;
    public static final int F_ANY_LAYOUT = 27;
    public static final int F_INDIRECT_DESC = 28;
    public static final int F_EVENT_IDX = 29;
    public static final int F_VERSION_1 = 32;
    public static final int F_ACCESS_PLATFORM = 33;
    public static final int F_RING_PACKED = 34;
    public static final int F_IN_ORDER = 35;
    public static final int F_ORDER_PLATFORM = 36;
    public static final int F_SR_IOV = 37;
    public static final int F_NOTIFICATION_DATA = 38;
    public static final int F_RING_RESET = 40;

    private VirtioFeatures() {}

    public static long bit(int b) {
        return 1L << b;
    }

    public static boolean has(long features, int b) {
        return (features & (1L << b)) != 0;
    }

    /** Bit numbers set in {@code features}, for logs: "0,5,28,32". */
    public static String list(long features) {
        StringBuilder s = new StringBuilder();
        for (int b = 0; b < 64; b++) {
            if (has(features, b)) {
                s.append(s.isEmpty() ? "" : ",").append(b);
            }
        }
        return s.toString();
    }
}
