<?php
/**
 * Verification of unikgate's assertions: a compact JWS, HS256 only.
 *
 * Plain PHP, no Matomo dependency, so that it is unit-tested on its own (tests/AssertionTest.php).
 * Claims of every assertion: iss = "unikgate", aud = Matomo's public base URL (the caller says
 * which: [UnikGate] public_url, else the URL Matomo computes for the request), sub = the Matomo
 * login, iat, exp (at most 60 s after iat; 30 s of clock skew allowed), jti (single use), rd (a
 * relative path), act = the action the assertion is for (missing means "login"): an assertion
 * made for one action is refused at every other.
 *
 * The actions (Controller.php) and the claims of their own, checked by the static methods below:
 * - login: none; sub must exist.
 * - provision: sub is the login to create; email (the new user's); acc (an object of site id =>
 *   "view" | "write" | "admin", maybe {}); owner (64 lowercase hex, sha256 of unikgate's
 *   issuer + "\n" + subject: whose account it is, so that a retry of a lost answer is known).
 * - access: sub exists; acc; prune (a boolean: also remove the sites acc does not list).
 * - superuser: none; sub is the login asked about (it may not exist), rd "/".
 */

namespace Piwik\Plugins\UnikGate;

final class AssertionException extends \Exception
{
    /** @var bool true when the token's signature was good: the caller holds the shared secret. */
    public $signed;

    public function __construct(string $message, bool $signed = false)
    {
        parent::__construct($message);
        $this->signed = $signed;
    }
}

final class Assertion
{
    public const ISSUER = 'unikgate';
    public const MAX_LIFETIME = 60;
    public const SKEW = 30;
    public const MIN_SECRET_BYTES = 32;
    public const MAX_TOKEN_BYTES = 4096;
    /** The levels an assertion may grant on a site (never superuser). */
    public const LEVELS = ['view', 'write', 'admin'];

    /** @var string */
    private $secret;
    /** @var string */
    private $audience;

    public function __construct(string $secret, string $audience)
    {
        if (strlen($secret) < self::MIN_SECRET_BYTES) {
            throw new AssertionException('shared secret missing or shorter than 32 bytes: set [UnikGate] shared_secret');
        }
        $this->secret = $secret;
        $this->audience = rtrim($audience, '/') . '/';
    }

    private static function b64decode(string $part): string
    {
        if ($part === '' || preg_match('/^[A-Za-z0-9_-]+$/', $part) !== 1) {
            throw new AssertionException('malformed token');
        }
        $raw = base64_decode(strtr($part, '-_', '+/') . str_repeat('=', (4 - strlen($part) % 4) % 4), true);
        if ($raw === false) {
            throw new AssertionException('malformed token');
        }
        return $raw;
    }

    public static function b64encode(string $raw): string
    {
        return rtrim(strtr(base64_encode($raw), '+/', '-_'), '=');
    }

    /**
     * Verifies a token made for the action `$act` and returns its claims.
     *
     * @param callable(string $jti, int $exp): bool $remember records a jti until exp; returns
     *        false when it was already recorded (a replay).
     * @param string $act the action asked for: the token's act claim (missing: "login") must be it.
     * @return array{sub: string, rd: string, jti: string, exp: int, claims: array<string, mixed>}
     * @throws AssertionException with a one-line reason
     */
    public function verify(string $token, int $now, callable $remember, string $act = 'login'): array
    {
        if (strlen($token) > self::MAX_TOKEN_BYTES) {
            throw new AssertionException('token too long');
        }
        $parts = explode('.', $token);
        if (count($parts) !== 3) {
            throw new AssertionException('malformed token');
        }
        [$h64, $p64, $s64] = $parts;
        $header = json_decode(self::b64decode($h64), true);
        if (!is_array($header) || ($header['alg'] ?? null) !== 'HS256' || ($header['typ'] ?? null) !== 'JWT'
            || count($header) !== 2) {
            throw new AssertionException('unsupported header: only {"alg":"HS256","typ":"JWT"}');
        }
        $expected = hash_hmac('sha256', $h64 . '.' . $p64, $this->secret, true);
        if (!hash_equals($expected, self::b64decode($s64))) {
            throw new AssertionException('bad signature');
        }
        $c = json_decode(self::b64decode($p64), true);
        if (!is_array($c)) {
            throw new AssertionException('malformed claims', true);
        }
        foreach (['iss', 'aud', 'sub', 'jti', 'rd'] as $k) {
            if (!isset($c[$k]) || !is_string($c[$k]) || $c[$k] === '') {
                throw new AssertionException("missing claim $k", true);
            }
        }
        foreach (['iat', 'exp'] as $k) {
            if (!isset($c[$k]) || !is_int($c[$k])) {
                throw new AssertionException("missing claim $k", true);
            }
        }
        if ($c['iss'] !== self::ISSUER) {
            throw new AssertionException('wrong issuer', true);
        }
        $got = $c['act'] ?? 'login';
        if (!is_string($got) || $got === '' || preg_match('/^[a-z]{1,32}$/D', $got) !== 1) {
            throw new AssertionException('malformed claim act', true);
        }
        if ($got !== $act) {
            throw new AssertionException("wrong action: the assertion is for $got, not $act", true);
        }
        if (rtrim($c['aud'], '/') . '/' !== $this->audience) {
            // Only a holder of the secret gets here; naming both tells the operator what differs.
            throw new AssertionException(
                'wrong audience: the assertion is for ' . rtrim($c['aud'], '/') . '/, this Matomo is ' . $this->audience,
                true
            );
        }
        if ($c['exp'] <= $c['iat'] || $c['exp'] - $c['iat'] > self::MAX_LIFETIME) {
            throw new AssertionException('lifetime longer than 60 s', true);
        }
        if ($c['iat'] > $now + self::SKEW) {
            throw new AssertionException("not yet valid (server time $now)", true);
        }
        if ($c['exp'] + self::SKEW <= $now) {
            throw new AssertionException("expired (server time $now)", true);
        }
        if (preg_match('/^[A-Za-z0-9_.@+\-ÄäÖöÜüß]{1,100}$/uD', $c['sub']) !== 1) {
            throw new AssertionException('sub is not a Matomo login', true);
        }
        $rd = $c['rd'];
        if ($rd[0] !== '/' || (strlen($rd) > 1 && ($rd[1] === '/' || $rd[1] === '\\'))
            || preg_match('/[\\\\\s\x00-\x1f\x7f]/', $rd) === 1) {
            throw new AssertionException('rd is not a relative path', true);
        }
        if (preg_match('/^[A-Za-z0-9_-]{16,128}$/D', $c['jti']) !== 1) {
            throw new AssertionException('malformed jti', true);
        }
        if (!$remember($c['jti'], $c['exp'] + self::SKEW)) {
            throw new AssertionException('replayed assertion', true);
        }
        return ['sub' => $c['sub'], 'rd' => $rd, 'jti' => $c['jti'], 'exp' => $c['exp'], 'claims' => $c];
    }

    /**
     * The `acc` claim, checked: site id => level, by site id. Site ids are strings of
     * digits without a leading zero (JSON object keys); levels are view, write or admin.
     *
     * @param array<string, mixed> $claims
     * @return array<int, string>
     * @throws AssertionException naming what is wrong ("acc ...")
     */
    public static function access(array $claims): array
    {
        $acc = $claims['acc'] ?? null;
        if (!is_array($acc)) {
            throw new AssertionException('acc missing or not an object of site ids to view, write or admin', true);
        }
        $out = [];
        foreach ($acc as $id => $level) {
            $id = (string) $id;
            if (preg_match('/^[1-9][0-9]{0,9}$/D', $id) !== 1) {
                throw new AssertionException('acc: ' . json_encode($id) . ' is not a site id', true);
            }
            if (!is_string($level) || !in_array($level, self::LEVELS, true)) {
                throw new AssertionException(
                    "acc: site $id cannot be given " . json_encode($level) . ' (only view, write or admin)',
                    true
                );
            }
            $out[(int) $id] = $level;
        }
        ksort($out);
        return $out;
    }

    /**
     * The `email` claim of a provision assertion: a non-empty string (Matomo checks its form).
     *
     * @param array<string, mixed> $claims
     */
    public static function email(array $claims): string
    {
        $email = $claims['email'] ?? null;
        if (!is_string($email) || trim($email) === '' || preg_match('/[\x00-\x1f\x7f]/', $email) === 1) {
            throw new AssertionException('missing claim email', true);
        }
        return $email;
    }

    /**
     * The `owner` claim of a provision assertion: 64 lowercase hex characters
     * (unikgate sends sha256(issuer + "\n" + subject)), kept beside the account it created.
     *
     * @param array<string, mixed> $claims
     */
    public static function owner(array $claims): string
    {
        $owner = $claims['owner'] ?? null;
        if (!is_string($owner) || preg_match('/^[0-9a-f]{64}$/D', $owner) !== 1) {
            throw new AssertionException('owner is not 64 lowercase hex characters', true);
        }
        return $owner;
    }

    /**
     * The `prune` claim of an access assertion: a boolean.
     *
     * @param array<string, mixed> $claims
     */
    public static function prune(array $claims): bool
    {
        $prune = $claims['prune'] ?? null;
        if (!is_bool($prune)) {
            throw new AssertionException('prune is not a boolean', true);
        }
        return $prune;
    }
}
