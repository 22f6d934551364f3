use crate::harness::run;

#[test]
fn smoke() {
    let r = run(r#"text("hi"); text(1+1); const u = await tools.get_user(); text(u.name); text({a:1,b:[2]});"#);
    println!("{:?}", r);
    assert_eq!(r.ok_texts(), ["hi", "2", "Ada", r#"{"a":1,"b":[2]}"#]);
}
