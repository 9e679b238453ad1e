package io.mqvirtio.build;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.peers.Peers;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * contrib/systemd's socket and service units, instantiated for a VM, pass systemd's own checks
 * ({@code systemd-analyze verify}: keys, values, the command it would run), and say what serve relies on: the
 * socket systemd holds is passed to a notify-type service. That serve works so started is ServeActivationTest's.
 */
class ContribUnitsTest {
    @TempDir
    Path dir;

    @Test
    @Timeout(60)
    void unitsPassSystemdAnalyzeVerify() throws Exception {
        Peers.require("systemd-analyze", "systemd's unit checker");
        Path contrib = Path.of("contrib/systemd");
        String socket = Files.readString(contrib.resolve("mqvirtio@.socket"));
        String service = Files.readString(contrib.resolve("mqvirtio@.service"));
        assertThat(socket).contains("ListenStream=/run/mqvirtio/%i.sock").contains("Accept=no");
        assertThat(service).contains("Type=notify").contains("Requires=mqvirtio@%i.socket")
                .contains("ExecStart=/usr/bin/mqvirtio serve --name %i $MQVIRTIO_ARGS");
        Files.writeString(dir.resolve("mqvirtio@vm1.socket"), socket);
        // the command must exist for verify: this checkout's, where the package would put /usr/bin/mqvirtio
        Files.writeString(dir.resolve("mqvirtio@vm1.service"),
                service.replace("/usr/bin/mqvirtio", Path.of("bin/mqvirtio").toAbsolutePath().toString()));
        Process p = new ProcessBuilder("systemd-analyze", "verify", dir.resolve("mqvirtio@vm1.service").toString(),
                dir.resolve("mqvirtio@vm1.socket").toString()).redirectErrorStream(true).start();
        p.getOutputStream().close();
        assertThat(p.waitFor(50, TimeUnit.SECONDS)).isTrue();
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertThat(p.exitValue()).as(out).isZero();
        assertThat(out).as("systemd-analyze's complaints").doesNotContainIgnoringCase("unknown")
                .doesNotContainIgnoringCase("invalid").doesNotContainIgnoringCase("failed");
    }
}
