package io.mqvirtio.net;

import static io.mqvirtio.virtio.SplitRing.*;
import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.linux.TestNetns;
import io.mqvirtio.peers.Peers;
import io.mqvirtio.peers.QemuGuestTest;
import io.mqvirtio.vhostuser.VhostUserException;
import io.mqvirtio.virtio.VirtioFeatures;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * Two VMs on one {@code mqvirtio serve} process: a real Linux guest on the first socket pings the host side of
 * its TAP from every vCPU, while the second socket's frontend misbehaves without pause — floods its device with
 * frames, breaks its rings with crafted descriptors, storms it with kicks, reconnects again and again. The guest
 * must lose no ping, and the daemon must still serve both sockets at the end.
 */
@Tag("peer")
class ServeIsolationTest {
    @TempDir
    Path dir;

    @Test
    @Timeout(300)
    void oneVmMisbehavesTheOtherLosesNothing() throws Exception {
        Peers.requireRoot("a TAP device in a network namespace");
        Peers.require("qemu-system-x86_64", "QEMU");
        Path repo = Path.of("").toAbsolutePath();
        Path good = dir.resolve("good.sock");
        Path bad = dir.resolve("bad.sock");
        Path log = dir.resolve("console.log");
        int net = ThreadLocalRandom.current().nextInt(10, 250);
        String host = "10.79." + net + ".1";
        String tap = "mqvi" + Integer.toHexString(ThreadLocalRandom.current().nextInt(0x10000));
        try (TestNetns ns = TestNetns.create()) {
            ns.ip("tuntap", "add", "dev", tap, "mode", "tap", "multi_queue");
            ns.ip("addr", "add", host + "/24", "dev", tap);
            ns.ip("link", "set", tap, "up");
            String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
            Process serve = new ProcessBuilder("ip", "netns", "exec", ns.name(), java, "--enable-native-access=ALL-UNNAMED",
                    "-cp", System.getProperty("java.class.path"), "io.mqvirtio.cli.Main", "serve",
                    "--vm", "socket-path=" + good + ",queues=2,tap=" + tap + ",name=good",
                    "--vm", "socket-path=" + bad + ",queues=2,loopback,name=bad")
                    .redirectErrorStream(true).redirectOutput(dir.resolve("serve.log").toFile()).start();
            Process qemu = null;
            AtomicBoolean stop = new AtomicBoolean();
            AtomicLong attacks = new AtomicLong();
            AtomicLong floodFrames = new AtomicLong();
            Thread hostile = null;
            try {
                long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
                while (!(Files.exists(good) && Files.exists(bad))) {
                    assertThat(serve.isAlive()).as("serve running:%n%s", Peers.tail(dir.resolve("serve.log"), 20)).isTrue();
                    assertThat(System.nanoTime()).as("sockets").isLessThan(deadline);
                    Thread.sleep(100);
                }
                qemu = new ProcessBuilder(repo.resolve("scripts/guest/run-guest.sh").toString(), "--vhost-user",
                        good.toString(), "--queues", "2", "--smp", "2", "--script",
                        repo.resolve("scripts/guest/tests/ping.sh").toString(), "--log", log.toString(), "--timeout", "200",
                        "--arg", "ip=10.79." + net + ".2/24", "--arg", "peer=" + host, "--arg", "count=60",
                        "--arg", "timeout=150")
                        .redirectErrorStream(true).redirectOutput(dir.resolve("run-guest.out").toFile())
                        .directory(repo.toFile()).start();
                Peers.waitForLine(log, "MQV-READY", 90);
                hostile = Thread.ofPlatform().name("bad-vm").start(() -> misbehave(bad, stop, attacks, floodFrames));
                assertThat(qemu.waitFor(200, TimeUnit.SECONDS)).as("guest finished").isTrue();
            } finally {
                stop.set(true);
                if (hostile != null) {
                    hostile.join(30_000);
                }
                Peers.stop(qemu, 5000);
            }
            try {
                String console = Files.readString(log);
                Map<String, String> r = QemuGuestTest.results(console);
                String context = "\n--- guest ---\n" + Peers.tail(log, 30) + "\n--- serve ---\n"
                        + Peers.tail(dir.resolve("serve.log"), 30);
                assertThat(attacks.get()).as("attacks made on the other VM's device").isGreaterThan(3);
                assertThat(floodFrames.get()).as("frames flooded into the other VM's device").isPositive();
                assertThat(r.get("sent")).as(context).isNotNull();
                assertThat(r.get("received")).as("pings answered, none lost%s", context).isEqualTo(r.get("sent"));
                assertThat(Integer.parseInt(r.get("sent"))).isEqualTo(120);
                // the daemon still serves the misbehaving VM's socket, with a well-behaved driver (once the bad VM's
                // last session has ended: while one runs, a second frontend is turned away)
                try (NetDriver nic = connectWhenFree(bad); Arena a = Arena.ofConfined()) {
                    HostileDriverTest.assertEchoes(nic.pair(1), a);
                }
                assertThat(serve.isAlive()).isTrue();
            } finally {
                Peers.stop(serve, 5000);
            }
        }
    }


    private static NetDriver connectWhenFree(Path sock) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (true) {
            try {
                return NetDriver.connect(sock, NetDriver.Options.pairs(2));
            } catch (io.mqvirtio.vhostuser.VhostUserException e) {
                if (System.nanoTime() > deadline) {
                    throw e;
                }
                Thread.sleep(50);
            }
        }
    }

    /** The bad VM: rounds of flooding, ring breaking and kick storms, each on a new connection. */
    private static void misbehave(Path sock, AtomicBoolean stop, AtomicLong attacks, AtomicLong flood) {
        long features = VirtioFeatures.bit(VirtioFeatures.F_VERSION_1) | VirtioFeatures.bit(VirtioNet.F_MQ)
                | VirtioFeatures.bit(VirtioNet.F_MRG_RXBUF);
        int round = 0;
        while (!stop.get()) {
            try {
                switch (round++ % 3) {
                    case 0 -> { // flood: as fast as the device takes frames, for a second
                        try (NetDriver nic = NetDriver.connect(sock, NetDriver.Options.pairs(2)); Arena a = Arena.ofConfined()) {
                            MemorySegment[] burst = new MemorySegment[32];
                            for (int i = 0; i < burst.length; i++) {
                                burst[i] = NetDriverContract.frame(a, 0, i, 1400);
                            }
                            long end = System.nanoTime() + TimeUnit.SECONDS.toNanos(1);
                            while (System.nanoTime() < end && !stop.get()) {
                                flood.addAndGet(nic.pair(0).send(burst, 0, burst.length));
                                nic.pair(0).receive(burst, new int[32], 32); // drain the echoes into the same frames
                            }
                        }
                    }
                    case 1 -> { // broken rings: a descriptor loop on TX, an avail jump on RX
                        try (EvilDriver d = new EvilDriver(sock, 2, 64, features, 1 << 20)) {
                            long off = d.alloc(64);
                            d.tx(0).desc(0, d.gpa(off), 16, DESC_F_NEXT, 1);
                            d.tx(0).desc(1, d.gpa(off + 16), 16, DESC_F_NEXT, 0);
                            d.tx(0).offer(0);
                            d.tx(0).kick();
                            d.rx(1).setAvailIdx(1000);
                            d.rx(1).kick();
                            Thread.sleep(200);
                        }
                    }
                    default -> { // a kick storm with nothing posted
                        try (EvilDriver d = new EvilDriver(sock, 2, 64, features, 1 << 20)) {
                            long end = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(700);
                            while (System.nanoTime() < end) {
                                for (EvilDriver.Ring r : d.rings) {
                                    r.kick();
                                }
                            }
                        }
                    }
                }
                attacks.incrementAndGet();
            } catch (VhostUserException | IllegalStateException e) {
                // the previous connection may still be closing: the device takes one frontend at a time
                sleep(100);
            } catch (InterruptedException e) {
                return;
            }
        }
    }

    private static void sleep(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
