package io.mqvirtio.backend;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.Tap;
import io.mqvirtio.net.PacketBackend;
import io.mqvirtio.net.Port;
import io.mqvirtio.net.VirtioNet;
import io.mqvirtio.virtio.Experiment;
import io.mqvirtio.virtio.VirtioFeatures;
import java.io.IOException;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A multiqueue TAP device (IFF_MULTI_QUEUE): one queue fd per queue pair, each carrying the 12-byte virtio-net
 * header (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), so frames pass between guest memory and the kernel with one
 * readv/writev and no copy. Offloads towards the guest follow the negotiated GUEST_* features (TUNSETOFFLOAD);
 * a pair whose rings are disabled has its queue detached (TUNSETQUEUE) so the kernel steers no flow to it.
 *
 * <p>An existing multiqueue TAP device (e.g. {@code ip tuntap add dev NAME mode tap multi_queue}) is used as it is and
 * outlives us; a name that does not exist yet in the opening thread's network namespace is created (not
 * persistent), and disappears when its last queue closes: on {@link #close()}, or when the process ends in any way.
 */
public final class TapBackend implements PacketBackend {
    private static final Logger LOG = System.getLogger(TapBackend.class.getName());

    /** IFNAMSIZ - 1: the longest interface name Linux takes. */
    public static final int MAX_NAME = 15;

    /** The kernel's TUN/TAP limit on queues per device (MAX_TAP_QUEUES). */
    public static final int MAX_QUEUES = 256;

    private static final int E2BIG = 7; // <asm-generic/errno-base.h>: too many queues on the device

    /** How frames go from the guest into the TAP. */
    public enum TxMethod {
        /** io_uring where the probe at start says a TAP write completes inline, writev otherwise (the default). */
        AUTO,
        /** io_uring, or the backend does not open. */
        IO_URING,
        /** One writev(2) per frame. */
        WRITEV
    }

    private final String name;
    private final boolean created;
    private final List<Tap> queues = new ArrayList<>();
    /** One per queue while TX goes through io_uring; empty with writev. */
    private final List<TapUringWriter> writers = new ArrayList<>();

    private TapBackend(String name, boolean created) {
        this.name = name;
        this.created = created;
    }

    /**
     * Why {@code ifName} cannot name a network interface (the kernel's {@code dev_valid_name}, and printable ASCII),
     * or null if it can. A single {@code %d} lets the kernel choose the number ({@code mqv%d}).
     */
    public static String invalidNameReason(String ifName) {
        if (ifName.isEmpty()) {
            return "an interface name cannot be empty";
        }
        if (ifName.length() > MAX_NAME) {
            return "an interface name has at most " + MAX_NAME + " characters, \"" + ifName + "\" has " + ifName.length();
        }
        if (ifName.equals(".") || ifName.equals("..")) {
            return "\"" + ifName + "\" is not an interface name";
        }
        for (int i = 0; i < ifName.length(); i++) {
            char c = ifName.charAt(i);
            if (c <= ' ' || c >= 0x7f || c == '/' || c == ':') {
                return "an interface name is printable ASCII without blanks, '/' or ':', got \"" + ifName + "\"";
            }
        }
        int pct = ifName.indexOf('%');
        if (pct >= 0 && (!ifName.startsWith("%d", pct) || ifName.indexOf('%', pct + 1) >= 0)) {
            return "'%' in an interface name may only appear once, as %d (the kernel picks the number): \"" + ifName + "\"";
        }
        return null;
    }

    /**
     * Opens {@code pairs} queues of TAP device {@code ifName}, in the calling thread's network namespace, creating
     * the device if it does not exist there.
     *
     * @throws IllegalArgumentException for a name Linux refuses or a queue count beyond the kernel's limit
     * @throws IllegalStateException when the kernel refuses, with what that usually means
     */
    public static TapBackend open(String ifName, int pairs) {
        return open(ifName, pairs, TxMethod.AUTO);
    }

    /**
     * The same, with TX by {@code tx}: {@link TxMethod#AUTO} probes io_uring on the first queue (a one-byte write the
     * TAP refuses must complete inside io_uring_enter) and falls back to writev, saying why in the log.
     */
    public static TapBackend open(String ifName, int pairs, TxMethod tx) {
        String bad = invalidNameReason(ifName);
        if (bad != null) {
            throw new IllegalArgumentException(bad);
        }
        if (pairs < 1 || pairs > MAX_QUEUES) {
            throw new IllegalArgumentException("a TAP device has 1.." + MAX_QUEUES + " queues, " + pairs + " asked");
        }
        boolean existed = !ifName.contains("%") && interfaceExists(ifName);
        TapBackend b = null;
        String actual = ifName;
        try {
            for (int i = 0; i < pairs; i++) {
                Tap q = openQueue(actual, i, existed);
                if (b == null) {
                    actual = q.interfaceName(); // "mqv%d" becomes the kernel's choice; later queues join that device
                    b = new TapBackend(actual, !existed);
                }
                b.queues.add(q);
                q.setVnetHdrSize(VirtioNet.HDR_SIZE);
                q.setNonBlocking(true);
                q.detach(); // attached when the guest enables the pair
            }
            String why = tx == TxMethod.WRITEV ? "writev asked for" : TapUringWriter.probe(b.queues.get(0));
            if (why != null && tx == TxMethod.IO_URING) {
                throw new IllegalStateException("tap " + actual + ": TX through io_uring asked for, but " + why);
            }
            if (why == null) {
                for (Tap q : b.queues) {
                    b.writers.add(new TapUringWriter(q));
                }
            }
            LOG.log(Level.INFO, "tap {0}: {1} queues opened on {2} device{3}; TX {4}, RX by readv", actual, pairs,
                    existed ? "an existing" : "a new", existed ? "" : " (it goes away when mqvirtio exits)",
                    why == null ? "through io_uring (" + TapUringWriter.SLOTS + " frames per io_uring_enter, registered "
                            + "file and buffer)" : "by writev (" + why + ")");
        } catch (RuntimeException e) {
            if (b != null) {
                b.close();
            }
            throw e;
        }
        return b;
    }

    private static Tap openQueue(String ifName, int index, boolean existed) {
        try {
            return Tap.openQueue(ifName, true);
        } catch (ErrnoException e) {
            String what = "tap " + ifName + ": cannot open queue " + index + " (" + e.getMessage() + ")";
            String hint = switch (e.errno()) {
                case ErrnoException.EPERM, ErrnoException.EACCES ->
                        "TAP queues need CAP_NET_ADMIN (run as root) or a persistent device owned by this user";
                case ErrnoException.EINVAL -> existed
                        ? ifName + " exists but is not a multiqueue TAP device (create one with: ip tuntap add dev "
                                + ifName + " mode tap multi_queue)"
                        : "the kernel refused the name or the flags";
                case ErrnoException.EBUSY -> ifName + " is in use in a way that admits no more queues";
                case ErrnoException.ENOENT, ErrnoException.ENODEV -> "this kernel has no /dev/net/tun (modprobe tun)";
                case E2BIG -> ifName + " has reached the kernel's limit of " + MAX_QUEUES + " queues";
                default -> "";
            };
            throw new IllegalStateException(hint.isEmpty() ? what : what + ": " + hint, e);
        }
    }

    /**
     * Whether an interface named {@code ifName} exists in the calling thread's network namespace ({@code
     * /proc/thread-self/net/dev} shows the thread's namespace, which may differ from the process's).
     */
    static boolean interfaceExists(String ifName) {
        Path dev = Path.of("/proc/thread-self/net/dev");
        try {
            for (String line : Files.readAllLines(dev)) {
                int colon = line.indexOf(':');
                if (colon > 0 && line.substring(0, colon).trim().equals(ifName)) {
                    return true;
                }
            }
            return false;
        } catch (IOException e) {
            return false;
        }
    }

    /** Whether this backend created its device (then it vanishes with the last queue) rather than joining one. */
    public boolean createdDevice() {
        return created;
    }

    public String interfaceName() {
        return name;
    }

    /** Queue {@code pair}'s descriptor (to wait on it: poll(2)); it stays the backend's. */
    public Tap queueFd(int pair) {
        return queues.get(pair);
    }

    @Override
    public int maxPairs() {
        return queues.size();
    }

    @Override
    public long features() {
        return VirtioFeatures.bit(VirtioNet.F_CSUM) | VirtioFeatures.bit(VirtioNet.F_GUEST_CSUM)
                | VirtioFeatures.bit(VirtioNet.F_HOST_TSO4) | VirtioFeatures.bit(VirtioNet.F_HOST_TSO6)
                | VirtioFeatures.bit(VirtioNet.F_HOST_ECN) | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO4)
                | VirtioFeatures.bit(VirtioNet.F_GUEST_TSO6) | VirtioFeatures.bit(VirtioNet.F_GUEST_ECN);
    }

    /** TUNSETOFFLOAD flags for what the guest accepts (its GUEST_* features). */
    static int offloads(long f) {
        if (!VirtioFeatures.has(f, VirtioNet.F_GUEST_CSUM)) {
            return 0; // segmentation offloads need checksum offload
        }
        int o = Tap.TUN_F_CSUM;
        if (VirtioFeatures.has(f, VirtioNet.F_GUEST_TSO4)) {
            o |= Tap.TUN_F_TSO4;
        }
        if (VirtioFeatures.has(f, VirtioNet.F_GUEST_TSO6)) {
            o |= Tap.TUN_F_TSO6;
        }
        if (VirtioFeatures.has(f, VirtioNet.F_GUEST_ECN) && (o & (Tap.TUN_F_TSO4 | Tap.TUN_F_TSO6)) != 0) {
            o |= Tap.TUN_F_TSO_ECN;
        }
        return o;
    }

    @Override
    public Port open(int pair) {
        Tap q = queues.get(pair);
        TapUringWriter uring = writers.isEmpty() ? null : writers.get(pair);
        return new Port() {
            private boolean attached;
            private boolean fallbackLogged;
            /** The writer's wait for a descriptor has been logged (and not its end yet). */
            private boolean waitLogged;
            /** Waits for a descriptor that ended: the first is logged at WARNING and INFO, later ones at DEBUG. */
            private int waits;

            @Override
            public int batch() {
                return uring != null && uring.usable() && !Experiment.TAP_WRITEV.on() ? TapUringWriter.SLOTS : 0;
            }

            @Override
            public boolean queue(IoVec frame) {
                if (uring == null) {
                    return false;
                }
                boolean taken = uring.queue(frame);
                if (!taken) {
                    checkFallback();
                }
                return taken;
            }

            @Override
            public boolean queue(long address, long length, IoVec scratch) {
                if (uring == null) {
                    return false;
                }
                boolean taken = uring.queue(address, length);
                if (!taken) {
                    checkFallback();
                }
                return taken;
            }

            @Override
            public int flush(long[] results) {
                if (uring == null) {
                    return 0;
                }
                int n = uring.flush(results);
                checkFallback();
                return n;
            }

            @Override
            public void discard() {
                if (uring != null) {
                    uring.discard();
                }
            }

            private void checkFallback() {
                if (uring.failure() != null && !fallbackLogged) {
                    fallbackLogged = true;
                    LOG.log(Level.WARNING, "tap {0}: queue {1}: {2}; its TX goes by writev from now on", name, pair,
                            uring.failure());
                }
                // Out of descriptors, and back: a line each way, per queue; after the first time, DEBUG (the limit
                // may come and go, and the log is every VM's)
                String waiting = uring.waiting();
                if (waiting != null && !waitLogged) {
                    waitLogged = true;
                    LOG.log(waits == 0 ? Level.WARNING : Level.DEBUG, "tap {0}: queue {1}: {2}; its TX goes by writev "
                            + "until a descriptor is free (tried again each second)", name, pair, waiting);
                } else if (waiting == null && waitLogged && uring.failure() == null) {
                    waitLogged = false;
                    LOG.log(waits++ == 0 ? Level.INFO : Level.DEBUG, "tap {0}: queue {1}: TX through io_uring again",
                            name, pair);
                }
            }

            @Override
            public String ioMethod(boolean isRx) {
                // any thread (the metrics'): what the worker does now
                return isRx ? "readv" : uring != null && uring.failure() == null && uring.waiting() == null
                        && !Experiment.TAP_WRITEV.on() ? "io_uring" : "writev";
            }

            @Override
            public int readFd() {
                return q.fd();
            }

            @Override
            public long send(IoVec frame) {
                return IoVec.writev(q, frame);
            }

            @Override
            public long receive(IoVec into) {
                return IoVec.readv(q, into);
            }

            /**
             * read(2), not a one-entry readv(2): the kernel imports no iovec. Paired windows, 2026-12-07, TAP into
             * our driver: the worker's CPU per frame 0.954-0.980x (64 and 1500 B, both layouts).
             */
            @Override
            public long receive(long address, long length, IoVec scratch) {
                return IoVec.read(q, address, length);
            }

            @Override
            public void setActive(boolean active) {
                if (active == attached) {
                    return;
                }
                if (active) {
                    q.attach();
                } else {
                    q.detach();
                }
                attached = active;
                // DEBUG: a frontend disables and enables its rings as often as it likes, each time detaching and
                // attaching this queue; the session notes each of those requests within its socket's allowance, and
                // the log is every VM's
                LOG.log(Level.DEBUG, "tap {0}: queue {1} {2}", name, pair, active ? "attached" : "detached");
            }

            @Override
            public boolean hostWritesHeaders() {
                return true;
            }

            @Override
            public void setFeatures(long features) {
                q.setOffload(offloads(features));
            }

            @Override
            public void close() {
                // the queue fds belong to the backend and close with it
            }
        };
    }

    @Override
    public String describe() {
        return "tap " + name + " (" + queues.size() + " queues" + (created ? ", created by mqvirtio" : "")
                + (writers.isEmpty() ? "" : ", TX through io_uring") + ")";
    }

    /** Whether TX goes through io_uring (the probe at open passed and it was not refused); a queue may still fall back. */
    public boolean txThroughIoUring() {
        return !writers.isEmpty();
    }

    @Override
    public void close() {
        if (queues.isEmpty()) {
            return;
        }
        writers.forEach(TapUringWriter::close); // first: a ring holds a reference to its queue's file
        writers.clear();
        queues.forEach(Tap::close);
        queues.clear();
        LOG.log(Level.INFO, "tap {0}: queues closed{1}", name,
                created ? " (the device we created goes with its last queue)" : " (the device stays)");
    }
}
