package io.mqvirtio.dist;

import static org.assertj.core.api.Assertions.assertThat;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * What {@code ./mvnw package} puts in {@code target/dist}, used as a user would: the archive unpacked and run from
 * where it lies on a machine whose default java is 17, and the .deb installed with dpkg (root only), run from PATH with
 * its own runtime, and removed again.
 */
class DistributionIT {
    private static final Path DIST = Path.of(System.getProperty("mqvirtio.dist", "target/dist"));
    private static final String VERSION = System.getProperty("mqvirtio.version", "0.1.0-SNAPSHOT");
    /** No JDK 25 on it, and no JAVA_HOME: the launcher must find one by itself (the archive) or bring one (.deb). */
    private static final Map<String, String> PLAIN_ENV = Map.of("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", "LANG", "C.UTF-8");

    @TempDir
    Path dir;

    record Result(int rc, String out) {}

    private static Result run(Map<String, String> env, String... argv) throws IOException, InterruptedException {
        ProcessBuilder pb = new ProcessBuilder(argv).redirectErrorStream(true);
        pb.environment().clear();
        pb.environment().putAll(env);
        Process p = pb.start();
        p.getOutputStream().close();
        byte[] out = p.getInputStream().readAllBytes();
        if (!p.waitFor(120, TimeUnit.SECONDS)) {
            p.destroyForcibly();
            throw new AssertionError(String.join(" ", argv) + ": no exit within 120 s");
        }
        return new Result(p.exitValue(), new String(out, StandardCharsets.UTF_8));
    }

    @Test
    @Timeout(300)
    void theArchiveRunsFromWhereItIsUnpacked() throws Exception {
        Path tgz = DIST.resolve("mqvirtio-" + VERSION + ".tar.gz");
        assertThat(tgz).exists();
        Result untar = run(PLAIN_ENV, "tar", "-C", dir.toString(), "-xzf", tgz.toString());
        assertThat(untar.rc()).as(untar.out()).isZero();
        Path home = dir.resolve("mqvirtio-" + VERSION);
        assertThat(home.resolve("share/man/man1/mqvirtio.1")).exists();
        assertThat(home.resolve("contrib/systemd/mqvirtio@.service")).exists();
        assertThat(home.resolve("contrib/systemd/mqvirtio@.socket")).exists();
        String bin = home.resolve("bin/mqvirtio").toString();

        Result version = run(PLAIN_ENV, bin, "--version");
        assertThat(version.rc()).as(version.out()).isZero();
        assertThat(version.out()).startsWith("mqvirtio " + VERSION + "\nJava 25");
        Result caps = run(PLAIN_ENV, bin, "serve", "--print-capabilities");
        assertThat(caps.out()).contains("\"type\": \"net\"");
        // a link to the launcher (as in /usr/local/bin) still finds the archive's lib/
        Path link = Files.createSymbolicLink(dir.resolve("mqvirtio-link"), Path.of(bin));
        Result demo = run(PLAIN_ENV, link.toString(), "demo", "--pairs", "1", "--seconds", "0.3");
        assertThat(demo.rc()).as(demo.out()).isZero();
        assertThat(demo.out()).contains("negotiated features:");
        Result man = run(Map.of("PATH", "/usr/bin:/bin", "MANWIDTH", "100"), "man", "-l",
                home.resolve("share/man/man1/mqvirtio.1").toString());
        assertThat(man.out()).contains("MQVIRTIO(1)").contains("serve");
    }

    @Test
    @Timeout(600)
    void theDebInstallsMqvirtioOnPathWithItsOwnRuntimeAndRemovesIt() throws Exception {
        Path deb;
        try (var files = Files.list(DIST)) {
            deb = files.filter(f -> f.getFileName().toString().endsWith(".deb")).findFirst().orElse(null);
        }
        assertThat(deb).as("a .deb in %s (jpackage needs dpkg-deb and fakeroot: scripts/install-deps.sh)", DIST).isNotNull();
        Result info = run(PLAIN_ENV, "dpkg-deb", "--field", deb.toString(), "Package", "Version");
        assertThat(info.out()).contains("Package: mqvirtio").contains("Version: " + VERSION.replaceFirst("-.*", ""));
        assumeTrue("root".equals(System.getProperty("user.name")), "installing a .deb needs root");
        Result already = run(PLAIN_ENV, "dpkg-query", "-W", "-f=${Status}", "mqvirtio");
        assumeTrue(already.rc() != 0 || !already.out().contains("installed"),
                "a mqvirtio package is installed on this machine already: not touching it");
        List<String> cleanup = new ArrayList<>(List.of("dpkg", "--purge", "mqvirtio"));
        try {
            Result install = run(PLAIN_ENV, "dpkg", "-i", deb.toString());
            assertThat(install.rc()).as(install.out()).isZero();
            assertThat(Path.of("/usr/bin/mqvirtio")).isSymbolicLink();
            Result version = run(PLAIN_ENV, "mqvirtio", "--version");
            assertThat(version.rc()).as(version.out()).isZero();
            assertThat(version.out()).startsWith("mqvirtio " + VERSION + "\nJava 25");
            Result demo = run(PLAIN_ENV, "mqvirtio", "demo", "--pairs", "2", "--seconds", "0.3");
            assertThat(demo.rc()).as("the jlink'd runtime has what serve and the driver need: %s", demo.out()).isZero();
            Result man = run(Map.of("PATH", "/usr/bin:/bin", "MANWIDTH", "100"), "man", "-w", "mqvirtio");
            assertThat(man.rc()).as(man.out()).isZero(); // man finds the page through its link in /usr/share/man
            assertThat(Path.of("/usr/share/man/man1/mqvirtio.1")).isSymbolicLink();
            assertThat(Path.of("/lib/systemd/system/mqvirtio@.service")).exists();
            assertThat(Path.of("/lib/systemd/system/mqvirtio@.socket")).exists();
            Result verify = run(PLAIN_ENV, "systemd-analyze", "verify", "mqvirtio@vm0.socket", "mqvirtio@vm0.service");
            assertThat(verify.out()).doesNotContain("mqvirtio@");
        } finally {
            Result purge = run(PLAIN_ENV, cleanup.toArray(new String[0]));
            assertThat(purge.rc()).as(purge.out()).isZero();
        }
        assertThat(Path.of("/usr/bin/mqvirtio")).doesNotExist();
        assertThat(Path.of("/usr/share/man/man1/mqvirtio.1")).doesNotExist();
        assertThat(Path.of("/lib/systemd/system/mqvirtio@.service")).doesNotExist();
        assertThat(Path.of("/opt/mqvirtio")).doesNotExist();
    }
}
