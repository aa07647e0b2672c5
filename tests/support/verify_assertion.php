<?php
// Runs the UnikGate plugin's real verifier on tokens made by unikgate (tests/plugin.rs).
// stdin: {"secret": "...", "audience": "...", "cases": [{"token": "...", "now": 123}, ...]}
// (a case may name the action it is posted to: "act": "provision"; else login)
// stdout: one JSON array, per case "ok <sub> <rd>" or "refused <reason>". One jti store for all.
require_once __DIR__ . '/../../matomo-plugin/UnikGate/Assertion.php';

use Piwik\Plugins\UnikGate\Assertion;
use Piwik\Plugins\UnikGate\AssertionException;

$in = json_decode(stream_get_contents(STDIN), true);
$seen = [];
$remember = function (string $jti, int $until) use (&$seen): bool {
    if (isset($seen[$jti])) {
        return false;
    }
    $seen[$jti] = $until;
    return true;
};
$out = [];
foreach ($in['cases'] as $case) {
    try {
        $c = (new Assertion($in['secret'], $in['audience']))->verify($case['token'], $case['now'], $remember, $case['act'] ?? 'login');
        $out[] = "ok {$c['sub']} {$c['rd']}";
    } catch (AssertionException $e) {
        $out[] = 'refused ' . $e->getMessage();
    }
}
echo json_encode($out);
