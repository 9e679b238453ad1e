package io.mqvirtio.net;

import io.mqvirtio.capture.QueueCapture;
import io.mqvirtio.device.WorkerStuckException;

import io.mqvirtio.linux.EventFd;
import io.mqvirtio.vhostuser.Protocol;
import io.mqvirtio.vhostuser.VhostUserDevice;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.vhostuser.WarningLimit;
import io.mqvirtio.virtio.DeviceRing;
import io.mqvirtio.virtio.RingLog;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.System.Logger;
import java.lang.System.Logger.Level;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicIntegerArray;
import java.util.function.Function;

/**
 * A multiqueue virtio-net device (VIRTIO_NET_F_MQ) served over vhost-user: one {@link QueuePairWorker} per queue
 * pair, each with its own port of the {@link PacketBackend}. Ring 2i is pair i's RX, ring 2i+1 its TX; the
 * frontend (QEMU) runs the control queue itself.
 */
public final class NetDevice implements VhostUserDevice, AutoCloseable {
    private static final Logger LOG = System.getLogger(NetDevice.class.getName());

    /**
     * Ring and device features every net device offers, whatever the backend. CTRL_RX: the frontend runs the control
     * queue (QEMU, DPDK virtio-user) and may accept RX-mode commands; we deliver every frame, so promiscuous and
     * all-multicast are what the device does anyway. RING_PACKED: both ring layouts are served (the frontend
     * chooses). IN_ORDER: the workers use every ring's chains in the order they were made available (TX completes each
     * chain as it is popped, RX the chains a frame fills and gives back the rest), so a TX burst can be completed
     * with one used entry.
     */
    static final long BASE_FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1)
            | VirtioFeatures.bit(VirtioNet.F_CTRL_RX)
            | VirtioFeatures.bit(VirtioFeatures.F_EVENT_IDX)
            | VirtioFeatures.bit(VirtioFeatures.F_INDIRECT_DESC)
            | VirtioFeatures.bit(VirtioNet.F_MQ)
            | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF)
            | VirtioFeatures.bit(VirtioFeatures.F_RING_PACKED)
            | VirtioFeatures.bit(VirtioFeatures.F_IN_ORDER)
            // After a migration the guest announces itself (QEMU asks it through the config space); QEMU sends us
            // SEND_RARP only for a guest that did not take this.
            | VirtioFeatures.bit(VirtioNet.F_GUEST_ANNOUNCE);

    /**
     * What a net device needs to know beyond its backend.
     *
     * @param busyPoll   workers poll their rings all the time, kicks off
     * @param pollMicros without busy polling: after frames moved, a worker keeps polling (kicks off) this long
     *                   before it enables kicks and sleeps again, so a steady stream costs no kick and no wake-up
     *                   per burst (the role of vhost-net's busyloop_timeout); 0: sleep as soon as the rings are empty
     */
    public record Config(String name, int pairs, int mtu, boolean busyPoll, int[] cpus, int pollMicros) {
        public Config(String name, int pairs, int mtu, boolean busyPoll, int[] cpus) {
            this(name, pairs, mtu, busyPoll, cpus, 0);
        }

        public Config {
            if (pollMicros < 0 || pollMicros > 1_000_000) {
                throw new IllegalArgumentException("poll window must be 0..1000000 µs: " + pollMicros);
            }
            if (pairs < 1 || pairs > VirtioNet.MAX_PAIRS) {
                throw new IllegalArgumentException("queue pairs must be 1.." + VirtioNet.MAX_PAIRS + ": " + pairs);
            }
            if (mtu < 68 || mtu > 65535) {
                throw new IllegalArgumentException("MTU must be 68..65535: " + mtu);
            }
        }

        public static Config of(String name, int pairs) {
            return new Config(name, pairs, 1500, false, new int[0]);
        }
    }

    private final Config config;
    private final PacketBackend backend;
    private final QueuePairWorker[] workers;
    /** How long the control thread waits for a worker's answer, and for all workers to stop at {@link #close}. */
    private final long commandTimeoutNanos;
    /** Per ring: 1 while it logs into a dirty log (written by the session's thread, read by the metrics). */
    private final AtomicIntegerArray ringLogged;
    private volatile long features;
    private volatile long lastFeatures;
    private volatile int mtu;
    /** Why this device can no longer be served, or null; set once, when a worker stops answering. */
    private volatile String dead;

    public NetDevice(Config config, PacketBackend backend) {
        this(config, backend, QueuePairWorker.COMMAND_TIMEOUT_NANOS);
    }

    /** With how long the control thread waits for a worker's answer (tests of a worker that hangs). */
    NetDevice(Config config, PacketBackend backend, long commandTimeoutNanos) {
        if (config.pairs() > backend.maxPairs()) {
            throw new IllegalArgumentException(backend.describe() + " serves at most " + backend.maxPairs() + " queue pairs, "
                    + config.pairs() + " asked");
        }
        this.config = config;
        this.backend = backend;
        this.commandTimeoutNanos = commandTimeoutNanos;
        this.mtu = config.mtu();
        this.workers = new QueuePairWorker[config.pairs()];
        this.ringLogged = new AtomicIntegerArray(2 * config.pairs());
        List<Port> opened = new ArrayList<>();
        // One allowance for what all of this device's workers log about its rings: this VM's frontend may break them
        // in a loop, and the log is every VM's.
        WarningLimit warnings = new WarningLimit(config.name());
        try {
            for (int i = 0; i < workers.length; i++) {
                Port p = backend.open(i);
                opened.add(p);
                int cpu = config.cpus().length == 0 ? -1 : config.cpus()[i % config.cpus().length];
                workers[i] = new QueuePairWorker(config.name(), i, p, config.busyPoll(), config.pollMicros() * 1000L, cpu,
                        commandTimeoutNanos, warnings);
            }
        } catch (RuntimeException e) {
            for (QueuePairWorker w : workers) {
                if (w != null) {
                    w.closeUnstarted(); // its epoll, eventfd and timerfd (they leaked)
                }
            }
            opened.forEach(Port::close);
            throw e;
        }
        for (QueuePairWorker w : workers) {
            w.start();
        }
        LOG.log(Level.INFO, "{0}: net device with {1} queue pairs on {2}", config.name(), config.pairs(), backend.describe());
    }

    public Config config() {
        return config;
    }

    public int pairs() {
        return workers.length;
    }

    @Override
    public int maxRings() {
        return 2 * workers.length;
    }

    @Override
    public long features() {
        return BASE_FEATURES | backend.features() | VirtioFeatures.bit(VirtioNet.F_MTU);
    }

    @Override
    public long protocolFeatures() {
        return (1L << Protocol.PF_MQ) | (1L << Protocol.PF_NET_MTU) | (1L << Protocol.PF_RARP);
    }

    @Override
    public long queueNum() {
        return workers.length;
    }

    /**
     * A legacy frontend (no VERSION_1) without MRG_RXBUF puts a 10-byte header before each frame (virtio 1.3, 5.1.6.1:
     * num_buffers is there only with VERSION_1 or MRG_RXBUF), where this device reads and writes 12 bytes: each frame
     * would be misread by two bytes both ways. Refused, saying so; legacy with MRG_RXBUF has the 12-byte header.
     */
    @Override
    public void checkFeatures(long f) {
        if (!VirtioFeatures.has(f, VirtioFeatures.F_VERSION_1) && !VirtioFeatures.has(f, VirtioNet.F_MRG_RXBUF)) {
            throw new VhostUserException("SET_FEATURES: a legacy driver (no VERSION_1) without MRG_RXBUF uses a "
                    + "10-byte virtio-net header, which this device does not support (offer the guest a modern "
                    + "device, or MRG_RXBUF)");
        }
    }

    @Override
    public void setFeatures(long f) {
        features = f;
        lastFeatures = f;
        int m = mtu;
        for (QueuePairWorker w : workers) {
            call(w, x -> x.setFeatures(f, m));
        }
    }

    /**
     * Runs a command on a worker. A worker that does not answer makes the whole device dead: its threads may still
     * touch the guest's memory and the frontend's descriptors, so none of that may be released, and no new frontend
     * may be served by it (see {@link #deadReason}).
     */
    private <T> T call(QueuePairWorker w, Function<QueuePairWorker, T> command) {
        String d = dead;
        if (d != null) {
            throw new WorkerStuckException("device is dead: " + d, true);
        }
        try {
            return w.call(command);
        } catch (WorkerStuckException e) {
            declareDead(e.getMessage());
            throw e;
        }
    }

    private synchronized void declareDead(String why) {
        if (dead == null) {
            dead = why;
            LOG.log(Level.ERROR, "{0}: device is dead, its memory and descriptors stay as they are and its socket "
                    + "refuses frontends until mqvirtio restarts: {1}", config.name(), why);
        }
    }

    @Override
    public String deadReason() {
        return dead;
    }

    public long negotiatedFeatures() {
        return features;
    }

    /** The features the most recent frontend negotiated, kept after its session ended (0 before any). */
    public long lastNegotiatedFeatures() {
        return lastFeatures;
    }

    /** The MTU in force: the configured one, or what the frontend set (NET_SET_MTU) since the last reset. */
    public int mtu() {
        return mtu;
    }

    private QueuePairWorker worker(int ring) {
        int pair = VirtioNet.pairOf(ring);
        if (pair >= workers.length) {
            throw new VhostUserException("ring " + ring + " is beyond " + workers.length + " queue pairs");
        }
        return workers[pair];
    }

    @Override
    public void startRing(int index, DeviceRing queue, EventFd kick, EventFd call, boolean enabled) {
        boolean rx = VirtioNet.isRx(index);
        call(worker(index), w -> w.startRing(rx, queue, kick, call, enabled));
        ringLogged.set(index, queue.isLogging() ? 1 : 0);
    }

    @Override
    public DeviceRing stopRing(int index) {
        boolean rx = VirtioNet.isRx(index);
        DeviceRing q = call(worker(index), w -> w.stopRing(rx));
        ringLogged.set(index, 0);
        return q;
    }

    @Override
    public void setLog(int index, RingLog log) {
        boolean rx = VirtioNet.isRx(index);
        call(worker(index), w -> w.setLog(rx, log));
        ringLogged.set(index, log != null ? 1 : 0);
    }

    /** Whether a ring logs its writes for a migration now (the metrics' mqvirtio_device_logging). */
    public boolean isLogging() {
        for (int i = 0; i < ringLogged.length(); i++) {
            if (ringLogged.get(i) != 0) {
                return true;
            }
        }
        return false;
    }

    /** Page marks the device's rings wrote into dirty logs, over the device's life. */
    public long dirtyPages() {
        long n = 0;
        for (QueuePairWorker w : workers) {
            n += w.rxCounters.get(QueueCounters.DIRTY_PAGES) + w.txCounters.get(QueueCounters.DIRTY_PAGES);
        }
        return n;
    }

    @Override
    public void enableRing(int index, boolean enabled) {
        boolean rx = VirtioNet.isRx(index);
        call(worker(index), w -> w.enable(rx, enabled));
    }

    @Override
    public void setCall(int index, EventFd call) {
        boolean rx = VirtioNet.isRx(index);
        call(worker(index), w -> w.setCall(rx, call));
    }

    @Override
    public void setErr(int index, EventFd err) {
        boolean rx = VirtioNet.isRx(index);
        call(worker(index), w -> w.setErr(rx, err));
    }

    @Override
    public void setMtu(int newMtu) {
        // DEBUG: the session logs it within its socket's allowance (a frontend can send it in a loop)
        LOG.log(Level.DEBUG, "{0}: frontend set MTU {1}", config.name(), newMtu);
        mtu = newMtu;
        long f = features;
        for (QueuePairWorker w : workers) {
            call(w, x -> x.setFeatures(f, newMtu));
        }
    }

    /** SEND_RARP: a reverse-ARP broadcast from the guest's MAC, so switches learn where it now is. */
    @Override
    public void sendRarp(byte[] mac) {
        byte[] frame = Frames.rarp(mac);
        // An automatic arena: the worker reads the frame; it must stay valid whatever happens to this call.
        MemorySegment buf = Arena.ofAuto().allocate(VirtioNet.HDR_SIZE + frame.length);
        MemorySegment.copy(MemorySegment.ofArray(frame), 0, buf, VirtioNet.HDR_SIZE, frame.length);
        call(workers[0], w -> w.inject(buf));
        LOG.log(Level.DEBUG, "{0}: sent RARP for {1}", config.name(), Frames.macString(mac)); // as setMtu's
    }

    /**
     * Every ring is stopped: the device starts clean for the next frontend. Frames the workers still hold (a parked
     * RX frame, the loopback's FIFO) are dropped, and the MTU and features go back to what this device was made with
     * (NET_SET_MTU and SET_FEATURES were the last frontend's).
     */
    @Override
    public void reset() {
        LOG.log(Level.DEBUG, "{0}: device reset", config.name()); // as setMtu's: every session ends with one
        mtu = config.mtu();
        features = 0;
        int m = mtu;
        for (QueuePairWorker w : workers) {
            call(w, x -> {
                x.reset();
                return x.setFeatures(0, m);
            });
        }
    }

    /** CPU time each pair's worker thread has used so far (ns), for CPU-per-packet figures. */
    public long[] workerCpuNanos() {
        java.lang.management.ThreadMXBean mx = java.lang.management.ManagementFactory.getThreadMXBean();
        long[] t = workerThreadIds();
        for (int i = 0; i < t.length; i++) {
            t[i] = mx.getThreadCpuTime(t[i]);
        }
        return t;
    }

    /** The Java thread id of each pair's worker (for tests and the bench: CPU time, bytes allocated). */
    long[] workerThreadIds() {
        long[] t = new long[workers.length];
        for (int i = 0; i < workers.length; i++) {
            t[i] = workers[i].threadId();
        }
        return t;
    }

    /** Per-queue counters: index 2i is pair i's RX, 2i+1 its TX. */
    public List<QueueCounters.Snapshot> counters() {
        List<QueueCounters.Snapshot> l = new ArrayList<>();
        for (QueuePairWorker w : workers) {
            l.add(w.rxCounters.snapshot());
            l.add(w.txCounters.snapshot());
        }
        return l;
    }

    /**
     * How each queue's frames move to or from the host, in the order of {@link #counters()} (pair 0 RX, pair 0 TX,
     * ...): e.g. "readv", "writev", "io_uring"; "" for a backend without system calls. A TX queue whose io_uring
     * failed says "writev" from then on.
     */
    public List<String> ioMethods() {
        List<String> l = new ArrayList<>();
        for (QueuePairWorker w : workers) {
            l.add(w.ioMethod(true));
            l.add(w.ioMethod(false));
        }
        return l;
    }

    /**
     * Captures the frames every queue pair moves, both directions, into {@code dir/NAME-qpN.pcapng} (made new and
     * 0600: what had the name is removed, a link never followed, a FIFO never opened), each frame's first
     * {@code snaplen} bytes, each file up to {@code maxBytesPerFile}; until {@link #close}. Returns the captures.
     * The files are made without the device's lock held: a file system that does not answer holds up this call
     * (its caller bounds its wait, as serve does), never {@link #close}; a device closed meanwhile gets no capture
     * (IllegalStateException, the files closed).
     */
    public List<QueueCapture> startCapture(java.nio.file.Path dir, int snaplen, long maxBytesPerFile)
            throws java.io.IOException {
        List<QueueCapture> started = new ArrayList<>();
        try {
            for (int i = 0; i < workers.length; i++) {
                started.add(new QueueCapture(dir.resolve(config.name() + "-qp" + i + ".pcapng"),
                        config.name() + "-qp" + i, "mqvirtio device " + config.name() + ", queue pair " + i
                        + " (outbound: the guest sent it; inbound: the guest received it)", snaplen, maxBytesPerFile));
            }
        } catch (java.io.IOException | RuntimeException e) {
            QueueCapture.closeAll(started, QueueCapture.CLOSE_WAIT);
            throw e;
        }
        List<QueueCapture> old = new ArrayList<>();
        synchronized (this) {
            if (closed) {
                old = started;
            } else {
                for (int i = 0; i < workers.length; i++) {
                    QueueCapture before = workers[i].capture(started.get(i));
                    if (before != null) {
                        old.add(before);
                    }
                }
                captures = List.copyOf(started);
            }
        }
        QueueCapture.closeAll(old, QueueCapture.CLOSE_WAIT);
        if (old == started) {
            throw new IllegalStateException(config.name() + ": closed while its capture started");
        }
        return started;
    }

    private List<QueueCapture> captures = List.of();

    /** The captures running ({@link #startCapture}), pair 0's first; empty when none. */
    public synchronized List<QueueCapture> captures() {
        return captures;
    }
    private boolean closed; // (this) close has begun: no capture starts

    /**
     * Stops the workers and closes the backend; what a worker that does not stop still uses stays open. The captures
     * are closed together, {@link QueueCapture#CLOSE_WAIT} at most for all of them.
     */
    @Override
    public void close() {
        QueueCapture.closeAll(closeLeavingCaptures(), QueueCapture.CLOSE_WAIT);
    }

    /**
     * Closes the device as {@link #close} does, but only asks its captures to finish ({@link QueueCapture#finish}) and
     * returns them: serve waits for every VM's under one deadline ({@link QueueCapture#closeAll}).
     */
    public List<QueueCapture> closeLeavingCaptures() {
        // Every worker is told to stop first, then all are waited for under one deadline, the command timeout: a
        // worker in a port change (a TAP ioctl waiting for the host's rtnl lock) is not waited for the slow-call
        // timeout, nor one after another (16 pairs took 16 x 120 s, past systemd's stop timeout, then SIGKILL).
        for (QueuePairWorker w : workers) {
            w.stop();
        }
        long deadline = System.nanoTime() + commandTimeoutNanos;
        boolean all = true;
        for (QueuePairWorker w : workers) {
            all &= w.awaitStop(deadline);
        }
        List<QueueCapture> finishing;
        synchronized (this) {
            closed = true;
            finishing = captures;
            captures = List.of();
        }
        finishing.forEach(QueueCapture::finish); // after the workers: nothing is offered any more
        if (all) {
            backend.close();
        } else {
            declareDead("a worker did not stop when the device closed");
        }
        return finishing;
    }
}
