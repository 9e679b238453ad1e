package io.mqvirtio.net;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import io.mqvirtio.backend.LoopbackBackend;
import io.mqvirtio.backend.TapBackend;
import io.mqvirtio.linux.IoVec;
import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.linux.UnixSocket;
import io.mqvirtio.vhostuser.LogCapture;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.vhostuser.VhostUserServer;
import io.mqvirtio.virtio.VirtioFeatures;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.logging.Level;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A worker that cannot be stopped: its port hangs in a system call nobody will complete (here a write into a full
 * socket whose reader never reads, as a backend on a hung host facility would). The device is declared dead: the
 * control thread gives up after its timeout, the session ends without unmapping the guest's memory or closing the
 * descriptors the worker may still use, the socket turns new frontends away with the reason, and another device in
 * the same process serves on. Nothing crashes.
 */
@Timeout(90)
class DeadDeviceTest {
    static final long FEATURES = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ);

    @TempDir
    Path dir;

    /** A backend whose one port sends by writing into {@code sink} (blocking). */
    static final class HangingBackend extends OnePortBackend {
        private final UnixSocket sink;

        HangingBackend(UnixSocket sink) {
            super("hanging");
            this.sink = sink;
        }

        @Override
        public Port open(int pair) {
            return new Port() {
                @Override
                public int readFd() {
                    return NEVER;
                }

                @Override
                public long send(IoVec frame) {
                    return IoVec.writev(sink, frame);
                }

                @Override
                public long receive(IoVec into) {
                    return -1;
                }

                @Override
                public void close() {}
            };
        }

    }

    static long mappingsOf(String memfd) throws IOException {
        return Files.readAllLines(Path.of("/proc/self/maps")).stream().filter(l -> l.contains("/memfd:" + memfd + " ")).count();
    }

    @Test
    void aWorkerThatDoesNotAnswerMakesOnlyItsOwnDeviceDead() throws Exception {
        long mappedBefore = mappingsOf("evil-driver"); // another test's dead device keeps its guest's memory mapped
        try (UnixSocket.Pair pipe = UnixSocket.pair(); Arena a = Arena.ofConfined()) {
            // fill the sink, then make it blocking: the next write waits until someone reads the other end
            MemorySegment chunk = a.allocate(65536);
            pipe.first().setNonBlocking(true);
            IoVec v = new IoVec(1);
            do {
                v.clear();
                v.add(chunk);
            } while (IoVec.writev(pipe.first(), v) > 0);
            pipe.first().setNonBlocking(false);

            NetDevice victim = new NetDevice(NetDevice.Config.of("victim", 1), new HangingBackend(pipe.first()), 1_000_000_000L);
            NetDevice bystander = new NetDevice(NetDevice.Config.of("bystander", 1), new LoopbackBackend(1, 1500));
            VhostUserServer vs = VhostUserServer.listen(dir.resolve("victim.sock"), victim);
            VhostUserServer bs = VhostUserServer.listen(dir.resolve("bystander.sock"), bystander);
            try {
                EvilDriver d = new EvilDriver(vs.path(), 1, 64, FEATURES, 1 << 20);
                HostileDriverTest.sendValid(d, 0, HostileDriverTest.frame(100, 1), 0);
                Thread.sleep(300); // the worker is in its port's write now, for good
                assertThatThrownBy(() -> d.fe.getVringBase(1)).isInstanceOf(VhostUserException.class);
                HostileDriverTest.await(() -> victim.deadReason() != null, "the device to be declared dead");
                assertThat(victim.deadReason()).contains("victim-qp0");
                HostileDriverTest.await(() -> !vs.hasSession(), "the session to end");
                d.close();
                assertThat(mappingsOf("evil-driver")).as("the guest memory the stuck worker may touch stays mapped")
                        .isEqualTo(mappedBefore + 1);
                // the socket turns frontends away, the other device serves
                assertThatThrownBy(() -> NetDriver.connect(vs.path(), NetDriver.Options.pairs(1)))
                        .isInstanceOf(VhostUserException.class);
                HostileDriverTest.assertEchoes(bs.path(), 1, 0);
            } finally {
                // let the port's write finish so the worker can end with the test
                pipe.second().setNonBlocking(true);
                MemorySegment sink = a.allocate(65536);
                while (pipe.second().read(sink) > 0) {
                    // drain
                }
                vs.close();
                victim.close();
                bs.close();
                bystander.close();
            }
        }
    }

    /**
     * A worker waiting for the host's network lock (rtnl), which each of a TAP's ioctls takes: TUNSETQUEUE when a pair
     * is enabled, the upkeep's reopen or re-attach. The host holds it as long as its configuration takes (a network
     * namespace of 16000 veth devices deleted held it 1.7 s here; more devices, longer). A command the session sent
     * meanwhile timed out and the device was declared dead, the VM's network down until serve restarted. Now the
     * worker is known to be waiting for the host: the command waits longer (12 command timeouts in all), said in the
     * log, and the pair works once the ioctl returns. Here pair 1's port waits 2.5 s before its real attach (and once in
     * its upkeep) with a command timeout of 0.5 s.
     */
    @Test
    void aWorkerWaitingForTheHostsNetworkLockIsNotDeclaredDead() throws Exception {
        String tap = "mqvl" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create(); LogCapture log = new LogCapture("io.mqvirtio", Level.INFO).quiet()) {
            ns.exec("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1");
            TapBackend tapBackend = ns.inside(() -> TapBackend.open(tap, 2, TapBackend.TxMethod.WRITEV));
            ns.ip("link", "set", tap, "up");
            AtomicLong slowMs = new AtomicLong();
            AtomicBoolean slowUpkeep = new AtomicBoolean();
            PacketBackend backend = new OnePortBackend("rtnl") {
                @Override
                public int maxPairs() {
                    return 2;
                }

                @Override
                public long features() {
                    return tapBackend.features();
                }

                @Override
                public Port open(int pair) {
                    Port real = tapBackend.open(pair);
                    return pair == 0 ? real : new RtnlWaitingPort(real, slowMs, slowUpkeep);
                }

                @Override
                public void close() {
                    tapBackend.close();
                }
            };
            try (NetDevice dev = new NetDevice(NetDevice.Config.of("rtnl", 2), backend, 500_000_000L);
                 VhostUserServer server = VhostUserServer.listen(dir.resolve("l.sock"), dev);
                 EvilDriver d = new EvilDriver(server.path(), 2, 64, FEATURES, 1 << 20)) {
                d.fe.setVringEnable(2, false);
                d.fe.setVringEnable(3, false);
                assertThat(QueuePairChurnTest.attachedQueues(ns, tap)).isEqualTo(1);

                slowMs.set(2500); // the attach waits for the host's lock, 5 command timeouts
                long start = System.nanoTime();
                d.fe.setVringEnable(2, true);
                assertThat((System.nanoTime() - start) / 1_000_000).as("answered once the attach returned")
                        .isGreaterThanOrEqualTo(2500);
                slowMs.set(0);
                d.fe.setVringEnable(3, true);
                assertThat(dev.deadReason()).isNull();
                assertThat(QueuePairChurnTest.attachedQueues(ns, tap)).isEqualTo(2);

                slowUpkeep.set(true); // the next upkeep waits 2.5 s: a command comes meanwhile
                HostileDriverTest.await(() -> !slowUpkeep.get(), "the upkeep to start waiting");
                d.fe.setVringEnable(3, false);
                d.fe.setVringEnable(3, true);
                assertThat(dev.deadReason()).isNull();

                long before = rxPackets(ns, tap);
                HostileDriverTest.sendValid(d, 1, HostileDriverTest.frame(100, 1), 0);
                HostileDriverTest.await(() -> d.tx(1).usedIdx() == 1, "pair 1's frame sent");
                HostileDriverTest.await(() -> rxPackets(ns, tap) > before, "pair 1's frame on the TAP");
                assertThat(log.lines().stream().filter(l -> l.contains("rtnl") && l.contains("waiting up to 6000 ms")))
                        .as("said in the log").hasSize(2);
            }
        }
    }

    /** The longer wait is bounded: a port change that never returns still makes the device dead, saying where it was. */
    @Test
    void aPortChangeThatNeverReturnsStillMakesTheDeviceDead() throws Exception {
        java.util.concurrent.CountDownLatch never = new java.util.concurrent.CountDownLatch(1);
        AtomicBoolean hang = new AtomicBoolean();
        PacketBackend backend = new OnePortBackend("never") {
            @Override
            public Port open(int pair) {
                return new Port() {
                    @Override public int readFd() { return NEVER; }
                    @Override public long send(IoVec frame) { return frame.totalBytes(); }
                    @Override public long receive(IoVec into) { return -1; }
                    @Override public void setActive(boolean active) {
                        if (active && hang.get()) {
                            try {
                                never.await();
                            } catch (InterruptedException e) {
                                Thread.currentThread().interrupt();
                            }
                        }
                    }
                    @Override public void close() {}
                };
            }
        };
        NetDevice dev = new NetDevice(NetDevice.Config.of("never", 1), backend, 250_000_000L);
        try (LogCapture log = new LogCapture("io.mqvirtio", Level.INFO).quiet();
             VhostUserServer server = VhostUserServer.listen(dir.resolve("n.sock"), dev);
             EvilDriver d = new EvilDriver(server.path(), 1, 64, FEATURES, 1 << 20)) {
            d.fe.setVringEnable(0, false);
            d.fe.setVringEnable(1, false);
            hang.set(true);
            long start = System.nanoTime();
            assertThatThrownBy(() -> d.fe.setVringEnable(0, true)).isInstanceOf(VhostUserException.class);
            HostileDriverTest.await(() -> dev.deadReason() != null, "the device to be declared dead");
            assertThat((System.nanoTime() - start) / 1_000_000).as("after 12 command timeouts").isBetween(2900L, 6000L);
            assertThat(dev.deadReason()).contains("never-qp0").contains("(in a port change");
        } finally {
            never.countDown();
            dev.close();
        }
    }

    /**
     * A device closed (serve's stop: SIGTERM, then SIGKILL after systemd's TimeoutStopSec, 90 s by default) while each
     * pair's worker waits for the host's rtnl lock in a port change (here its upkeep, which never returns while the
     * test holds it). Each worker's close waited the slow-call timeout (12 command timeouts, 120 s), one pair after
     * another: 16 pairs, 32 minutes. Now every worker is told to stop at once and all are waited for under one command
     * timeout; those still waiting for the host keep their resources (the device is dead) and end by themselves once
     * the host lets them through.
     */
    @Test
    void closingADeviceWhoseWorkersWaitForTheHostIsBounded() throws Exception {
        java.util.concurrent.CountDownLatch held = new java.util.concurrent.CountDownLatch(1);
        java.util.concurrent.atomic.AtomicInteger waiting = new java.util.concurrent.atomic.AtomicInteger();
        PacketBackend backend = new HeldUpkeepBackend(4, held, waiting);
        NetDevice dev = new NetDevice(NetDevice.Config.of("held", 4), backend, 250_000_000L);
        try (LogCapture log = new LogCapture("io.mqvirtio", Level.INFO).quiet()) {
            HostileDriverTest.await(() -> waiting.get() == 4, "every pair's upkeep to wait for the host");
            long start = System.nanoTime();
            dev.close();
            assertThat((System.nanoTime() - start) / 1_000_000).as("one command timeout for all four pairs")
                    .isLessThan(1500L);
            assertThat(dev.deadReason()).contains("did not stop");
            assertThat(log.lines().stream().filter(l -> l.contains("does not stop") && l.contains("port change")))
                    .as("each pair says what it waits for").hasSize(4);
        } finally {
            held.countDown();
        }
        HostileDriverTest.await(() -> Thread.getAllStackTraces().keySet().stream()
                .noneMatch(t -> t.getName().startsWith("held-qp")), "the workers to end once the host let them through");
    }

    static long rxPackets(TestNetns ns, String tap) {
        try {
            return Long.parseLong(ns.exec("cat", "/sys/class/net/" + tap + "/statistics/rx_packets").trim());
        } catch (Exception e) {
            throw new AssertionError(e);
        }
    }

    /** A real TAP queue's port whose attach or detach (and upkeep, once) first waits, as for the host's rtnl lock. */
    private record RtnlWaitingPort(Port real, AtomicLong slowMs, AtomicBoolean slowUpkeep) implements Port {
        static void sleep(long ms) {
            try {
                Thread.sleep(ms);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }

        @Override
        public void setActive(boolean active) {
            sleep(slowMs.get());
            real.setActive(active);
        }

        @Override
        public boolean upkeep() {
            if (slowUpkeep.getAndSet(false)) {
                sleep(2500);
            }
            return real.upkeep();
        }

        @Override public int readFd() { return real.readFd(); }
        @Override public long send(IoVec frame) { return real.send(frame); }
        @Override public long send(long address, long length, IoVec scratch) { return real.send(address, length, scratch); }
        @Override public boolean queue(long address, long length, IoVec scratch) { return real.queue(address, length, scratch); }
        @Override public int batch() { return real.batch(); }
        @Override public boolean queue(IoVec frame) { return real.queue(frame); }
        @Override public int flush(long[] results) { return real.flush(results); }
        @Override public void discard() { real.discard(); }
        @Override public String ioMethod(boolean isRx) { return real.ioMethod(isRx); }
        @Override public long receive(IoVec into) { return real.receive(into); }
        @Override public long receive(long address, long length, IoVec scratch) { return real.receive(address, length, scratch); }
        @Override public boolean readsFrames() { return real.readsFrames(); }
        @Override public boolean hostWritesHeaders() { return real.hostWritesHeaders(); }
        @Override public long upkeepNanos() { return real.upkeepNanos(); }
        @Override public void setFeatures(long features) { real.setFeatures(features); }
        @Override public void reset() { real.reset(); }
        @Override public void close() { real.close(); }
    }
}
