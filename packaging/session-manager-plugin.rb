# Homebrew formula: builds session-manager-plugin from the release's source tarball with cargo.
#
# TEMPLATE, not a usable formula: @HOMEPAGE@ and @RELEASE_URL@ below are placeholders, and the
# version and sha256 are examples. packaging/build.sh writes dist/session-manager-plugin.rb from
# it, with the version, the sha256 of the source tarball it made
# (dist/session-manager-plugin-<version>.src.tar.gz) and, from its environment, HOMEPAGE (the
# project's page) and RELEASE_URL (where that tarball will be published). Publish the tarball
# there and put the written formula in a tap. Not tested here (no macOS or Homebrew on the build
# machine).
#
# It conflicts with Homebrew's cask `session-manager-plugin` (AWS's plugin), which installs the
# same command.
class SessionManagerPlugin < Formula
  desc "Drop-in replacement for AWS's Session Manager plugin (aws ssm start-session)"
  homepage "@HOMEPAGE@"
  url "@RELEASE_URL@"
  version "0.1.0"
  sha256 "0000000000000000000000000000000000000000000000000000000000000000"
  license "Apache-2.0"

  depends_on "rust" => :build

  def install
    # Only the plugin: the workspace's test-support crate (tests/agent-sim) is not installed.
    system "cargo", "install", *std_cargo_args(path: ".") # std_cargo_args adds --locked
    man1.install "packaging/session-manager-plugin.1"
    doc.install "README.md", "CHANGELOG.md"
  end

  def caveats
    <<~EOS
      If AWS's plugin is installed too (the session-manager-plugin cask, or
      /usr/local/sessionmanagerplugin), make sure this one comes first on PATH:
        which session-manager-plugin
    EOS
  end

  test do
    assert_match "1.2.764.0", shell_output("#{bin}/session-manager-plugin --version")
    assert_match "session-manager-plugin #{version}", shell_output("#{bin}/session-manager-plugin --help")
  end
end
