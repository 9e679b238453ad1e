package io.mqvirtio.cli;

import static org.assertj.core.api.Assertions.assertThat;

import io.mqvirtio.net.NetDriver;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFileAttributes;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** {@code serve --vm ... --vm ...}: several devices in one process; {@code --socket-group}; their errors. */
class ServeManyVmsTest {
    static final long START_MS = 30_000;

    @TempDir
    Path dir;

    @Test
    @Timeout(120)
    void twoVmsEachOnItsOwnSocketSharedWithAGroup() throws Exception {
        Path a = dir.resolve("a.sock");
        Path b = dir.resolve("b.sock");
        String group = Files.readAttributes(dir, PosixFileAttributes.class).group().getName();
        Path c = dir.resolve("c.sock");
        // a and b share the group given beside the specs; c has one of its own (root's group here: only the owner)
        List<String> cmd = Launcher.command("serve", "--vm", "socket-path=" + a + ",queues=2,loopback,name=vm-a,poll-us=200",
                "--vm", "socket-path=" + b + ",queues=1,loopback,name=vm-b", "--socket-group", group,
                "--vm", "socket-path=" + c + ",queues=1,loopback,name=vm-c,socket-group=root");
        try (Launcher.Run r = Launcher.start(dir, "serve-two", cmd)) {
            r.awaitErr("listening on " + java.util.regex.Pattern.quote(c.toString()), START_MS);
            r.awaitErr(java.util.regex.Pattern.quote(b.toString()) + ": group .* may connect", START_MS);
            for (Path s : List.of(a, b, c)) {
                PosixFileAttributes at = Files.readAttributes(s, PosixFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
                assertThat(PosixFilePermissions.toString(at.permissions())).isEqualTo("rw-rw----");
                assertThat(at.group().getName()).as("the group of %s", s).isEqualTo(s.equals(c) ? "root" : group);
            }
            try (NetDriver x = NetDriver.connect(a, NetDriver.Options.pairs(2));
                 NetDriver y = NetDriver.connect(b, NetDriver.Options.pairs(1))) {
                assertThat(x.maxPairs()).isEqualTo(2);
                assertThat(y.maxPairs()).isEqualTo(1);
            }
            r.process().destroy();
            assertThat(r.exit(15_000)).isZero();
            assertThat(a).doesNotExist();
            assertThat(b).doesNotExist();
            assertThat(c).doesNotExist();
            assertThat(r.stderr()).contains("vm-a: stopped (SIGTERM)").contains("vm-b: stopped (SIGTERM)");
        }
    }

    @Test
    @Timeout(120)
    void badVmSpecsAreClearErrors() throws Exception {
        String s = dir.resolve("x.sock").toString();
        record Case(String expect, String... args) {}
        for (Case c : List.of(
                new Case("unknown key 'color'", "serve", "--vm", "socket-path=" + s + ",loopback,color=red"),
                new Case("exactly one backend", "serve", "--vm", "socket-path=" + s),
                new Case("is given to two VMs", "serve", "--vm", "socket-path=" + s + ",loopback,name=a",
                        "--vm", "socket-path=" + s + ",loopback,name=b"),
                new Case("two VMs are named", "serve", "--vm", "socket-path=" + s + ",loopback,name=a",
                        "--vm", "socket-path=" + s + "2,loopback,name=a"),
                new Case("belongs inside --vm", "serve", "--queues", "2", "--vm", "socket-path=" + s + ",loopback"),
                new Case("--socket-group: no group named", "serve", "--socket-path", s, "--loopback",
                        "--socket-group", "no-such-group-mqv"))) {
            try (Launcher.Run r = Launcher.runToEnd(dir, "bad", 30_000, c.args())) {
                assertThat(r.exit(30_000)).as("exit for %s", c.expect()).isIn(1, 2);
                assertThat(r.stderr()).as("stderr for %s", c.expect()).contains(c.expect()).doesNotContain("\tat ");
            }
        }
    }
}
