//! Shell arithmetic (`$(( ))`, `(( ))`, `for (( ))`): brush-parser's
//! expression tree, evaluated on 64-bit integers with wrapping, as in sh.
//! Division by zero is an error, not a crash; the recursion follows the
//! expression's depth, which the command line's nesting bound limits.

use brush_parser::ast::{
    ArithmeticExpr as E, ArithmeticTarget, BinaryOperator as B, UnaryAssignmentOperator, UnaryOperator,
};

/// Where an expression reads and writes variables.
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
    fn set(&mut self, name: &str, value: String) -> Result<(), String>;
}

/// Parses and evaluates `text` (already expanded).
pub fn eval(text: &str, vars: &mut dyn Vars) -> Result<i64, String> {
    let expr = brush_parser::arithmetic::parse(text)
        .map_err(|_| format!("arithmetic expression: expecting primary: \"{}\"", text.trim()))?;
    evaluate(&expr, vars, 0)
}

/// Variables that refer to variables are followed this deep at most.
const MAX_INDIRECTION: usize = 16;

fn value_of(name: &str, vars: &mut dyn Vars, depth: usize) -> Result<i64, String> {
    let text = vars.get(name).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    if let Some(n) = parse_number(text) {
        return Ok(n);
    }
    if depth < MAX_INDIRECTION && crate::provider::wasm::shell::syntax::is_name(text) {
        return value_of(text, vars, depth + 1);
    }
    if depth < MAX_INDIRECTION {
        return eval_nested(text, vars, depth + 1);
    }
    Err(format!("arithmetic expression: expecting primary: \"{text}\""))
}

fn eval_nested(text: &str, vars: &mut dyn Vars, depth: usize) -> Result<i64, String> {
    let expr = brush_parser::arithmetic::parse(text).map_err(|_| format!("Illegal number: {text}"))?;
    evaluate(&expr, vars, depth)
}

/// A number as sh reads it: decimal, `0x` hexadecimal, `0` octal.
pub fn parse_number(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let value = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()? as i64
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()? as i64
    } else {
        digits.parse::<u64>().ok()? as i64
    };
    Some(if negative { value.wrapping_neg() } else { value })
}

fn target_name(target: &ArithmeticTarget) -> Result<&str, String> {
    match target {
        ArithmeticTarget::Variable(name) => Ok(name),
        ArithmeticTarget::ArrayElement(..) => Err("arrays are not supported".into()),
    }
}

fn evaluate(expr: &E, vars: &mut dyn Vars, depth: usize) -> Result<i64, String> {
    Ok(match expr {
        E::Literal(n) => *n,
        E::Reference(target) => value_of(target_name(target)?, vars, depth)?,
        E::UnaryOp(op, e) => {
            let v = evaluate(e, vars, depth)?;
            match op {
                UnaryOperator::UnaryPlus => v,
                UnaryOperator::UnaryMinus => v.wrapping_neg(),
                UnaryOperator::BitwiseNot => !v,
                UnaryOperator::LogicalNot => i64::from(v == 0),
            }
        }
        E::BinaryOp(B::LogicalAnd, a, b) => i64::from(evaluate(a, vars, depth)? != 0 && evaluate(b, vars, depth)? != 0),
        E::BinaryOp(B::LogicalOr, a, b) => i64::from(evaluate(a, vars, depth)? != 0 || evaluate(b, vars, depth)? != 0),
        E::BinaryOp(op, a, b) => {
            let (a, b) = (evaluate(a, vars, depth)?, evaluate(b, vars, depth)?);
            binary(*op, a, b)?
        }
        E::Conditional(c, a, b) => {
            if evaluate(c, vars, depth)? != 0 {
                evaluate(a, vars, depth)?
            } else {
                evaluate(b, vars, depth)?
            }
        }
        E::Assignment(target, e) => {
            let v = evaluate(e, vars, depth)?;
            vars.set(target_name(target)?, v.to_string())?;
            v
        }
        E::BinaryAssignment(op, target, e) => {
            let name = target_name(target)?;
            let v = binary(*op, value_of(name, vars, depth)?, evaluate(e, vars, depth)?)?;
            vars.set(name, v.to_string())?;
            v
        }
        E::UnaryAssignment(op, target) => {
            let name = target_name(target)?;
            let old = value_of(name, vars, depth)?;
            let (new, result) = match op {
                UnaryAssignmentOperator::PrefixIncrement => (old.wrapping_add(1), old.wrapping_add(1)),
                UnaryAssignmentOperator::PrefixDecrement => (old.wrapping_sub(1), old.wrapping_sub(1)),
                UnaryAssignmentOperator::PostfixIncrement => (old.wrapping_add(1), old),
                UnaryAssignmentOperator::PostfixDecrement => (old.wrapping_sub(1), old),
            };
            vars.set(name, new.to_string())?;
            result
        }
    })
}

fn binary(op: B, a: i64, b: i64) -> Result<i64, String> {
    Ok(match op {
        B::Power => {
            if b < 0 {
                return Err("exponent less than 0".into());
            }
            a.wrapping_pow(u32::try_from(b).unwrap_or(u32::MAX))
        }
        B::Multiply => a.wrapping_mul(b),
        B::Divide | B::Modulo if b == 0 => return Err("division by zero".into()),
        B::Divide => a.wrapping_div(b),
        B::Modulo => a.wrapping_rem(b),
        B::Comma => b,
        B::Add => a.wrapping_add(b),
        B::Subtract => a.wrapping_sub(b),
        B::ShiftLeft => a.wrapping_shl((b & 63) as u32),
        B::ShiftRight => a.wrapping_shr((b & 63) as u32),
        B::LessThan => i64::from(a < b),
        B::LessThanOrEqualTo => i64::from(a <= b),
        B::GreaterThan => i64::from(a > b),
        B::GreaterThanOrEqualTo => i64::from(a >= b),
        B::Equals => i64::from(a == b),
        B::NotEquals => i64::from(a != b),
        B::BitwiseAnd => a & b,
        B::BitwiseXor => a ^ b,
        B::BitwiseOr => a | b,
        B::LogicalAnd => i64::from(a != 0 && b != 0),
        B::LogicalOr => i64::from(a != 0 || b != 0),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    impl Vars for HashMap<String, String> {
        fn get(&self, name: &str) -> Option<String> {
            HashMap::get(self, name).cloned()
        }
        fn set(&mut self, name: &str, value: String) -> Result<(), String> {
            self.insert(name.to_string(), value);
            Ok(())
        }
    }

    #[test]
    fn arithmetic_follows_sh() {
        let mut vars: HashMap<String, String> = [("x".to_string(), "7".to_string()), ("y".into(), "x".into())].into();
        let cases = [
            ("1 + 2 * 3", 7),
            ("(1 + 2) * 3", 9),
            ("x % 4", 3),
            ("y + 1", 8),
            ("2 ** 10", 1024),
            ("x > 3 && x < 10", 1),
            ("!x", 0),
            ("0x10 + 010", 24),
            ("x++, x", 8),
            ("z += 5", 5),
            ("-9223372036854775807 - 2", 9223372036854775807),
        ];
        for (text, want) in cases {
            assert_eq!(eval(text, &mut vars), Ok(want), "{text}");
        }
        assert_eq!(eval("1 / 0", &mut vars), Err("division by zero".into()));
        // A self-referring variable stops at the indirection bound.
        let mut vars: HashMap<String, String> = [("a".to_string(), "a".to_string())].into();
        assert!(eval("a + 1", &mut vars).is_err());
    }
}
