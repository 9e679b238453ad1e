package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.net.HeldUpkeepBackend;
import io.mqvirtio.net.NetDevice;
import io.mqvirtio.vhostuser.LogCapture;
import io.mqvirtio.vhostuser.VhostUserServer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.Level;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** serve's stop ({@link Serve.Running#stop}: SIGTERM, SIGINT) is bounded, whatever its VMs' workers do. */
class ServeStopTest {
    @TempDir
    Path dir;

    /**
     * systemd stops serve (SIGTERM) while the host holds its rtnl lock for good: every VM's worker is in a TAP ioctl
     * (here its port's upkeep, which never returns while the test holds it). Each device's close waits one command
     * timeout (10 s) for its workers; serve closed its VMs one after another, so 9 VMs went past systemd's
     * TimeoutStopSec (90 s by default), then SIGKILL: captures cut, socket files left. Now the VMs stop together,
     * under one bound: three take about one command timeout, not three.
     */
    @Test
    @Timeout(60)
    void stopWaitsOneBoundForAllVmsWhoseWorkersWaitForTheHost() throws Exception {
        CountDownLatch held = new CountDownLatch(1);
        AtomicInteger waiting = new AtomicInteger();
        Serve.Running r = new Serve.Running();
        List<Path> sockets = new ArrayList<>();
        try (LogCapture log = new LogCapture("io.mqvirtio", Level.INFO).quiet()) {
            for (int i = 0; i < 3; i++) {
                NetDevice d = new NetDevice(NetDevice.Config.of("held" + i, 1), new HeldUpkeepBackend(1, held, waiting));
                sockets.add(dir.resolve("held" + i + ".sock"));
                r.adopt(d, VhostUserServer.listen(sockets.get(i), d));
            }
            long until = System.nanoTime() + 10_000_000_000L;
            while (waiting.get() < 3 && System.nanoTime() < until) {
                Thread.sleep(10);
            }
            assertThat(waiting.get()).as("every VM's worker waiting for the host").isEqualTo(3);
            long start = System.nanoTime();
            Thread stopper = Thread.ofPlatform().daemon().start(() -> r.stop("TERM"));
            stopper.join(20_000);
            assertThat(stopper.isAlive()).as("serve stopped within 20 s (3 VMs, each waited 10 s for its worker)")
                    .isFalse();
            assertThat((System.nanoTime() - start) / 1_000_000).isBetween(9_000L, 20_000L);
            for (Path s : sockets) {
                assertThat(Files.exists(s)).as("%s removed", s).isFalse();
            }
            assertThat(log.lines().stream().filter(l -> l.contains("does not stop"))).hasSize(3);
        } finally {
            held.countDown();
        }
    }
}
