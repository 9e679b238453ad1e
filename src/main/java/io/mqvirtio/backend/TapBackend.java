package io.mqvirtio.backend;

import io.mqvirtio.linux.ErrnoException;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.NetNs;
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
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Supplier;

/**
 * A multiqueue TAP device (IFF_MULTI_QUEUE): one queue fd per queue pair, each carrying the 12-byte virtio-net
 * header (IFF_VNET_HDR, TUNSETVNETHDRSZ 12), so frames pass between guest memory and the kernel with one
 * readv/writev and no copy. Offloads towards the guest follow the negotiated GUEST_* features (TUNSETOFFLOAD);
 * a pair whose rings are disabled has its queue detached (TUNSETQUEUE) so the kernel steers no flow to it.
 *
 * <p>An existing multiqueue TAP device (e.g. {@code ip tuntap add dev NAME mode tap multi_queue}) is used as it is and
 * outlives us; a name that does not exist yet in the opening thread's network namespace is created (not
 * persistent), and disappears when its last queue closes: on {@link #close()}, or when the process ends in any way.
 *
 * <p>The host may change the device under us; each pair's worker looks after its queue once a second
 * ({@link Port#upkeep}). A device deleted and created again under the same name (a script, a network manager) is
 * joined again: the queue is reopened by name in the network namespace the backend was opened in, set up as at start
 * and attached as the guest's pairs are. A device of that name that is not a multiqueue TAP, or one another process
 * holds without virtio-net headers, is refused with one line and tried again every {@link #REFUSED_RETRY_NANOS}.
 * We never create the device again ourselves: a device deleted on purpose stays deleted. Nor do we join again a device
 * whose name the kernel picked ({@code mqv%d}: the first number free): the next device anyone asks for by that
 * pattern (another serve's VM, a QEMU) gets the freed name, and joining it would put our guest's frames on another's
 * network and spread its traffic over our queues; such a device stays gone. The virtio-net header size
 * is the device's, and any holder of one of its queues can change it (TUNSETVNETHDRSZ): a thread of the process's
 * reads it each second (not a worker: the ioctl takes the rtnl lock), and pair 0's worker sets it back, with our
 * offloads, logging the first time. The same thread reads each attached queue's flags (TUNGETIFF): another holder of
 * a queue's file can detach it, and its worker attaches it again.
 */
public final class TapBackend implements PacketBackend {
    private static final Logger LOG = System.getLogger(TapBackend.class.getName());

    /** IFNAMSIZ - 1: the longest interface name Linux takes. */
    public static final int MAX_NAME = 15;

    /** The kernel's TUN/TAP limit on queues per device (MAX_TAP_QUEUES). */
    public static final int MAX_QUEUES = 256;

    private static final int E2BIG = 7; // <asm-generic/errno-base.h>: too many queues on the device

    /** How often a worker looks after its queue ({@link Port#upkeep}): whether the device is gone, its header size. */
    static final long UPKEEP_NANOS = TimeUnit.SECONDS.toNanos(1);
    /** After a device of our name refused a queue (not a multiqueue TAP, no virtio-net headers), the next try. */
    public static final long REFUSED_RETRY_NANOS = TimeUnit.SECONDS.toNanos(5);

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
    /** The name is the operator's, not the kernel's pick from a pattern: a device created again under it is joined. */
    private final boolean named;
    /** The queues, by pair (a queue reopened on a device created again replaces its entry: guarded by this). */
    private final List<Tap> queues = new ArrayList<>();
    /** One per queue while TX goes through io_uring; empty with writev (guarded by this, as {@link #queues}). */
    private final List<TapUringWriter> writers = new ArrayList<>();
    /** The network namespace the device was opened in (queues are reopened there), and its name in /proc. */
    private final NetNs netns;
    private final String netnsId;
    /** The offloads set last (TUNSETOFFLOAD flags; the device's, so the same for every pair), or -1. */
    private volatile int offloads = -1;
    /**
     * The offloads the device has from us: set by a queue (any: they are the device's) and not lost since (the device
     * gone), or -1. Guarded by {@link #offloadLock}, with the setting of {@link #offloads} on a queue.
     */
    private int offloadsOnDevice = -1;
    private final Object offloadLock = new Object();
    private final AtomicLong headerResets = new AtomicLong();
    /** TUNSETOFFLOADs made on the device (each takes the host's rtnl lock). */
    private final AtomicLong offloadSets = new AtomicLong();
    /** Queues found detached by another holder of their file and attached again. */
    private final AtomicLong reattaches = new AtomicLong();
    /**
     * One thread of the process's for every TAP's header-size probe (once a second, pair 0's queue): TUNGETVNETHDRSZ
     * takes the kernel's rtnl lock, which the host's network configuration holds as long as it likes, and a worker
     * waiting for it each second would stall its pair's traffic with it. The probe only reads; pair 0's worker sets
     * the size back when the probe saw it changed (an attacker's case, not every second's).
     */
    private static final ScheduledExecutorService HEADER_PROBES = Executors.newSingleThreadScheduledExecutor(
            r -> Thread.ofPlatform().name("mqvirtio-tap-probe").daemon(true).unstarted(r));
    private ScheduledFuture<?> headerProbe;
    private final AtomicLong reopened = new AtomicLong();
    /** Queues whose device is gone and not reopened yet; a reopen logged since; the last refusal logged (this). */
    private int goneQueues;
    private final List<TapPort> ports = new ArrayList<>();
    private boolean reopenLogged;
    private String refusalLogged;

    private TapBackend(String name, boolean created, boolean named, NetNs netns, String netnsId) {
        this.name = name;
        this.created = created;
        this.named = named;
        this.netns = netns;
        this.netnsId = netnsId;
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
        NetNs ns = null;
        try {
            ns = NetNs.current();
            String nsId = namespaceId();
            for (int i = 0; i < pairs; i++) {
                Tap q = openQueue(actual, i, existed);
                if (b == null) {
                    actual = q.interfaceName(); // "mqv%d" becomes the kernel's choice; later queues join that device
                    b = new TapBackend(actual, !existed, !ifName.contains("%"), ns, nsId);
                    ns = null; // the backend's now
                }
                b.queues.add(q);
                setUp(q, actual);
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
            if (ns != null) {
                ns.close();
            }
            throw e;
        }
        return b;
    }

    /**
     * Sets a queue up as every queue of ours is (the header size, non-blocking), after checking that the device gives
     * it virtio-net headers: a device another process holds keeps that process's flags whatever ours asked for, and
     * our 12-byte headers would be read as frames.
     */
    private static void setUp(Tap q, String ifName) {
        int want = Tap.IFF_VNET_HDR | Tap.IFF_NO_PI;
        int flags = q.flags();
        if ((flags & want) != want) {
            throw new IllegalStateException("tap " + ifName + ": another process holds the device without "
                    + ((flags & Tap.IFF_VNET_HDR) == 0 ? "virtio-net headers (IFF_VNET_HDR)" : "IFF_NO_PI")
                    + ", which its first queue chose; our queues need them");
        }
        q.setVnetHdrSize(VirtioNet.HDR_SIZE);
        q.setNonBlocking(true);
    }

    /** The calling thread's network namespace as /proc names it ("net:[4026531840]"), or "" if unreadable. */
    private static String namespaceId() {
        try {
            return Files.readSymbolicLink(Path.of("/proc/thread-self/ns/net")).toString();
        } catch (IOException | UnsupportedOperationException e) {
            return "";
        }
    }

    /**
     * Runs {@code body} in the namespace the device was opened in: at once from a thread that is there (serve's own,
     * started inside {@code ip netns exec} or not), else having entered it for the call and come back.
     */
    private <T> T inNamespace(Supplier<T> body) {
        if (netnsId.equals(namespaceId()) && !netnsId.isEmpty()) {
            return body.get();
        }
        try (NetNs own = NetNs.current()) {
            netns.enter();
            try {
                return body.get();
            } finally {
                own.enter();
            }
        }
    }

    private static Tap openQueue(String ifName, int index, boolean existed) {
        try {
            return Tap.openQueue(ifName, true);
        } catch (ErrnoException e) {
            String what = "tap " + ifName + ": cannot open " + (index < 0 ? "a queue" : "queue " + index) + " ("
                    + e.getMessage() + ")";
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
    public synchronized Tap queueFd(int pair) {
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
        Tap q;
        TapUringWriter uring;
        synchronized (this) {
            q = queues.get(pair);
            uring = writers.isEmpty() ? null : writers.get(pair);
        }
        TapPort p = new TapPort(pair, q, uring);
        synchronized (this) {
            ports.add(p);
            if (headerProbe == null) {
                headerProbe = HEADER_PROBES.scheduleWithFixedDelay(this::probe, UPKEEP_NANOS, UPKEEP_NANOS,
                        TimeUnit.NANOSECONDS);
            }
        }
        return p;
    }

    /**
     * The probe, once a second on {@link #HEADER_PROBES}' thread: pair 0's queue for the device's header size, and
     * each queue its worker holds attached for a detach it did not make (one TUNGETIFF each).
     */
    private void probe() {
        List<TapPort> all;
        synchronized (this) {
            all = List.copyOf(ports);
        }
        for (TapPort p : all) {
            if (p.pair == 0) {
                p.probeHeaderSize();
            }
            p.probeDetached();
        }
    }

    /** Pair {@code pair}'s port: its worker's only. */
    private final class TapPort implements Port {
        private final int pair;
        /**
         * The queue, and its io_uring writer (null with writev): replaced when the device is created again. Read by
         * the header-size probe's thread too.
         */
        private volatile Tap q;
        /** The probe found the device's header size changed: pair 0's worker sets it back at its next upkeep. */
        private volatile boolean headerChanged;
        /**
         * The probe found the queue detached while its worker holds it attached: a holder of a duplicate of our
         * descriptor (pidfd_getfd) detached it (TUNSETQUEUE acts on the file, whoever calls it). Attached again at
         * the worker's next upkeep.
         */
        private volatile boolean detachedByOther;
        /** What {@link #attached} says, for the probe's thread. */
        private volatile boolean attachedSeen;
        private volatile TapUringWriter uring;
        private boolean attached;
        /** Not reopened yet since its device was last seen gone (guarded by the backend). */
        private boolean owed;
        /** What the guest's pair asks for (attached or not), which a reopened queue is set to. */
        private boolean wanted;
        /** The device is gone: the queue waits to be reopened, at {@link #reopenAt} at the earliest. */
        private boolean gone;
        private long reopenAt;
        private boolean fallbackLogged;
        /** A write was refused: the next ones capture errno at once (no allocation per frame otherwise), until one is not. */
        private boolean refusing;
        /** The writer's wait for a descriptor has been logged (and not its end yet). */
        private boolean waitLogged;
        /** Waits for a descriptor that ended: the first is logged at WARNING and INFO, later ones at DEBUG. */
        private int waits;

        TapPort(int pair, Tap q, TapUringWriter uring) {
            this.pair = pair;
            this.q = q;
            this.uring = uring;
        }

        @Override
        public int batch() {
            TapUringWriter u = uring;
            return u != null && u.usable() && !Experiment.TAP_WRITEV.on() ? TapUringWriter.SLOTS : 0;
        }

        @Override
        public boolean queue(IoVec frame) {
            TapUringWriter u = uring;
            if (u == null) {
                return false;
            }
            boolean taken = u.queue(frame);
            if (!taken) {
                checkFallback(u);
            }
            return taken;
        }

        @Override
        public boolean queue(long address, long length, IoVec scratch) {
            TapUringWriter u = uring;
            if (u == null) {
                return false;
            }
            boolean taken = u.queue(address, length);
            if (!taken) {
                checkFallback(u);
            }
            return taken;
        }

        @Override
        public int flush(long[] results) {
            TapUringWriter u = uring;
            if (u == null) {
                return 0;
            }
            int n = u.flush(results);
            checkFallback(u);
            return n;
        }

        @Override
        public void discard() {
            TapUringWriter u = uring;
            if (u != null) {
                u.discard();
            }
        }

        private void checkFallback(TapUringWriter u) {
            if (u.failure() != null && !fallbackLogged) {
                fallbackLogged = true;
                LOG.log(Level.WARNING, "tap {0}: queue {1}: {2}; its TX goes by writev from now on", name, pair,
                        u.failure());
            }
            // Out of descriptors, and back: a line each way, per queue; after the first time, DEBUG (the limit
            // may come and go, and the log is every VM's)
            String waiting = u.waiting();
            if (waiting != null && !waitLogged) {
                waitLogged = true;
                LOG.log(waits == 0 ? Level.WARNING : Level.DEBUG, "tap {0}: queue {1}: {2}; its TX goes by writev "
                        + "until a descriptor is free (tried again each second)", name, pair, waiting);
            } else if (waiting == null && waitLogged && u.failure() == null) {
                waitLogged = false;
                LOG.log(waits++ == 0 ? Level.INFO : Level.DEBUG, "tap {0}: queue {1}: TX through io_uring again",
                        name, pair);
            }
        }

        @Override
        public String ioMethod(boolean isRx) {
            // any thread (the metrics'): what the worker does now
            TapUringWriter u = uring;
            return isRx ? "readv" : u != null && u.failure() == null && u.waiting() == null
                    && !Experiment.TAP_WRITEV.on() ? "io_uring" : "writev";
        }

        @Override
        public int readFd() {
            return q.fd();
        }

        @Override
        public long send(IoVec frame) {
            // Without errno capture while writes go through (no allocation per frame); a failed one is made again
            // capturing it (a TAP wrote nothing). A TAP counts each write it refuses for another reason than room
            // (a link down: EIO) as a drop of its own, so while it refuses, writes capture errno at once: the host
            // counted each such frame twice, now only the first of a run of refusals.
            if (!refusing) {
                long n = IoVec.tryWritev(q, frame);
                if (n >= 0) {
                    return n;
                }
            }
            refusing = true;
            long n = IoVec.writev(q, frame); // a refusal throws, and refusing stays set
            refusing = false; // written, or no room (EAGAIN): the TAP takes frames
            return n;
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
            wanted = active;
            if (active == attached) {
                return;
            }
            if (gone) {
                // no ioctl (each takes the rtnl lock) on a queue whose device is gone: the reopened one is set to this
                throw new IllegalStateException("tap " + name + " is gone; queue " + pair + " is reopened as "
                        + (active ? "attached" : "detached") + " when a TAP of that name exists again");
            }
            if (active) {
                q.attach();
            } else {
                q.detach();
            }
            attached = active;
            attachedSeen = active;
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
            int o = offloads(features);
            // Every pair's worker is told the features (SET_FEATURES, NET_SET_MTU, each reset): the device's offloads
            // are set by the first, once per change (each TUNSETOFFLOAD takes the host's rtnl lock, which N pairs
            // took N times, and a frontend may send NET_SET_MTU in a loop). A device created again gets them as each
            // queue is reopened on it.
            synchronized (offloadLock) {
                offloads = o;
                if (o != offloadsOnDevice) {
                    setOffload(q, o);
                }
            }
        }

        @Override
        public long upkeepNanos() {
            return UPKEEP_NANOS;
        }

        /**
         * Once a second: a poll tells whether the device is gone (no lock of the kernel's); pair 0 also reads the
         * header size (one ioctl). A queue whose device is gone is reopened when a device of the name exists again.
         */
        @Override
        public boolean upkeep() {
            long now = System.nanoTime();
            if (!gone) {
                if (!q.deviceGone()) {
                    if (headerChanged) {
                        headerChanged = false;
                        checkHeaderSize();
                    }
                    if (detachedByOther) {
                        detachedByOther = false;
                        checkAttached();
                    }
                    return false;
                }
                gone = true;
                reopenAt = now;
                deviceGone();
            }
            if (!named || now - reopenAt < 0) {
                return false; // a name the kernel picked is anyone's next: never joined again
            }
            reopenAt = now + UPKEEP_NANOS;
            return reopen(now);
        }

        /**
         * The header size is the device's: a second holder of one of its queues that sets it (TUNSETVNETHDRSZ, 10
         * for the legacy header) has every frame both ways misread (garbage frames, never a crash). Set back, with
         * the offloads, which the same holder may have changed (they cannot be read back from a TAP: frames with
         * offloads the guest did not negotiate are dropped by the worker's RX header check meanwhile).
         */
        private void checkHeaderSize() {
            // read again here, on the queue this worker holds: the probe may have read a descriptor closed meanwhile
            int size;
            try {
                size = q.vnetHdrSize();
            } catch (RuntimeException e) {
                return; // gone since the poll: the next upkeep reopens
            }
            if (size == VirtioNet.HDR_SIZE) {
                return;
            }
            try {
                q.setVnetHdrSize(VirtioNet.HDR_SIZE);
                restoreOffloads(q);
            } catch (RuntimeException e) {
                return; // gone meanwhile: the next upkeep reopens, and sets both on the new device
            }
            long n = headerResets.incrementAndGet();
            LOG.log(n == 1 ? Level.WARNING : Level.DEBUG, "tap {0}: its virtio-net header size was {1}, not {2}: "
                    + "another holder of one of its queues set it (TUNSETVNETHDRSZ), and frames both ways were misread "
                    + "meanwhile; set back, with our offloads ({3} time{4} so far; checked each second)", name, size,
                    VirtioNet.HDR_SIZE, n, n == 1 ? "" : "s");
        }

        /**
         * The queue our worker holds attached was detached by another holder of its file: attached again (read again
         * here, on the queue this worker holds: the probe may have read a descriptor closed meanwhile). The kernel
         * steered no flow to it meanwhile (it drops frames when no queue is attached): the guest's RX on this pair
         * was cut until it changed its pairs.
         */
        private void checkAttached() {
            try {
                if (!attached || (q.flags() & Tap.IFF_DETACH_QUEUE) == 0) {
                    return;
                }
                q.attach();
            } catch (RuntimeException e) {
                return; // gone meanwhile: the next upkeep reopens; or refused: the probe sees it again
            }
            long n = reattaches.incrementAndGet();
            LOG.log(n == 1 ? Level.WARNING : Level.DEBUG, "tap {0}: queue {1} was detached by another holder of its "
                    + "file (TUNSETQUEUE), and the host''s frames for the guest were steered elsewhere or dropped "
                    + "meanwhile; attached again ({2} time{3} so far; checked each second)", name, pair, n,
                    n == 1 ? "" : "s");
        }

        /** The probe: whether the queue is detached while its worker holds it attached (a read only). */
        void probeDetached() {
            if (!attachedSeen) {
                return;
            }
            try {
                if ((q.flags() & Tap.IFF_DETACH_QUEUE) != 0) {
                    detachedByOther = true;
                }
            } catch (RuntimeException e) {
                // gone, or closed: the worker's upkeep sees to it
            }
        }

        /**
         * The probe, on {@link #HEADER_PROBES}' thread: reads the header size (a read only, harmless even on a
         * descriptor closed and reused meanwhile: the worker reads it again before it sets anything).
         */
        void probeHeaderSize() {
            try {
                if (q.vnetHdrSize() != VirtioNet.HDR_SIZE) {
                    headerChanged = true;
                }
            } catch (RuntimeException e) {
                // gone, or closed: the worker's upkeep sees to it
            }
        }

        /** Opens this queue again on a device of our name, if there is one; true when {@link #readFd} changed. */
        private boolean reopen(long now) {
            Tap fresh;
            try {
                fresh = inNamespace(() -> interfaceExists(name) ? openQueue(name, -1, true) : null);
                if (fresh == null) {
                    return false; // not there (yet): looked for again at the next upkeep, which takes no lock
                }
                try {
                    setUp(fresh, name);
                    restoreOffloads(fresh);
                    if (!wanted) {
                        fresh.detach(); // a new queue starts attached
                    }
                } catch (RuntimeException e) {
                    fresh.close();
                    throw e;
                }
            } catch (RuntimeException e) {
                reopenAt = now + REFUSED_RETRY_NANOS;
                refused(e.getMessage());
                return false;
            }
            TapUringWriter old = uring;
            TapUringWriter writer = old == null ? null : new TapUringWriter(fresh);
            if (old != null) {
                old.close(); // a ring holds a reference to its queue's file: before the queue
            }
            Tap was = q;
            q = fresh;
            uring = writer;
            synchronized (TapBackend.this) {
                queues.set(pair, fresh);
                if (writer != null) {
                    writers.set(pair, writer);
                }
            }
            was.close();
            attached = wanted;
            attachedSeen = wanted;
            gone = false;
            reopened(this, pair, wanted);
            return true;
        }

        @Override
        public void close() {
            // the queue fds belong to the backend and close with it
        }
    }

    /**
     * A queue found its device gone: one line for the device, until every port has been reopened since (the others
     * notice within their next upkeep, some perhaps only after the first reopened on a device created at once); for a
     * name the kernel picked, one line for good (it is not joined again).
     */
    private synchronized void deviceGone() {
        synchronized (offloadLock) {
            offloadsOnDevice = -1; // a device created again has none of ours
        }
        if (!named) {
            if (goneQueues == 0) {
                goneQueues = -1; // said once: nothing is reopened
                LOG.log(Level.WARNING, "tap {0} is gone (deleted); its name was the kernel''s pick, the first free "
                        + "of a pattern, which the next device asked for that way takes (another VM''s): it is not "
                        + "joined again, and this VM''s frames are dropped and counted until serve restarts", name);
            }
            return;
        }
        if (goneQueues == 0) {
            goneQueues = ports.size();
            ports.forEach(p -> p.owed = true);
            LOG.log(Level.WARNING, "tap {0} is gone (deleted); its frames are dropped and counted until a TAP of that "
                    + "name exists again in its network namespace, which each queue then joins (looked for each "
                    + "second)", name);
        }
    }

    /** Sets on {@code q} the offloads set last (the guest's features), if any were: they are the device's. */
    private void restoreOffloads(Tap q) {
        synchronized (offloadLock) {
            int o = offloads;
            if (o >= 0) {
                setOffload(q, o);
            }
        }
    }

    /** Sets the device's offloads through {@code q}; with {@link #offloadLock} held. */
    private void setOffload(Tap q, int o) {
        offloadSets.incrementAndGet();
        offloadsOnDevice = -1; // until it worked
        q.setOffload(o);
        offloadsOnDevice = o;
    }

    /** A device of our name refused a queue: one line per reason (each queue tries again, at a bounded rate). */
    private synchronized void refused(String why) {
        if (!why.equals(refusalLogged)) {
            refusalLogged = why;
            LOG.log(Level.WARNING, "{0}; tried again every {1} s", why, TimeUnit.NANOSECONDS.toSeconds(REFUSED_RETRY_NANOS));
        }
    }

    /** A queue reopened: INFO for the first of the queues that were gone, DEBUG for the others. */
    private synchronized void reopened(TapPort port, int pair, boolean attached) {
        long n = reopened.incrementAndGet();
        LOG.log(reopenLogged ? Level.DEBUG : Level.INFO, "tap {0}: queue {1} reopened on the device of that name, {2} "
                + "({3} reopened in all)", name, pair, attached ? "attached" : "detached", n);
        reopenLogged = true;
        refusalLogged = null;
        if (port.owed) {
            port.owed = false;
            if (--goneQueues == 0) {
                reopenLogged = false;
            }
        }
    }

    /** How many times a queue was reopened on a device created again under our name. */
    public long queuesReopened() {
        return reopened.get();
    }

    /** How many times a queue was found detached by another holder of its file and attached again. */
    public long queuesReattached() {
        return reattaches.get();
    }

    /** How many times the device's offloads were set (TUNSETOFFLOAD, tried): by the guest's features, or set back. */
    public long offloadSets() {
        return offloadSets.get();
    }

    /** How many times the device's virtio-net header size was found changed by another holder and set back. */
    public long headerSizeResets() {
        return headerResets.get();
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
    public synchronized void close() {
        if (headerProbe != null) {
            headerProbe.cancel(false);
        }
        netns.close();
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
